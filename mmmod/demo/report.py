"""The demo's comparison: a Markdown table and an accuracy-vs-latency plot."""

COLUMNS = ('model', 'test top-1 (%)', 'params (M)', 'MACs (M)',
           'CPU latency, batch 1 (ms)', 'speed-up')


def comparison_rows(results, baseline):
    """Table rows from ``{name: dict(top1=, params=, macs=, latency=)}``,
    where ``latency`` is a :func:`mmmod.utils.measure_latency` entry; the
    speed-up is the baseline's median latency over each model's."""
    base = results[baseline]['latency']['median']
    rows = []
    for name, r in results.items():
        lat = r['latency']
        rows.append((name, f"{r['top1']:.2f}", f"{r['params'] / 1e6:.2f}",
                     f"{r['macs'] / 1e6:.1f}",
                     f"{lat['median']:.2f} [{lat['q1']:.2f}, {lat['q3']:.2f}]",
                     f"{base / lat['median']:.2f}x"))
    return rows


def plot_accuracy_latency(results, path, title):
    """One point per model: median latency (bar: quartiles) vs top-1,
    labelled with its speed-up over the first model."""
    import matplotlib
    matplotlib.use('Agg')  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    base = next(iter(results.values()))['latency']['median']
    for name, r in results.items():
        lat = r['latency']
        ax.errorbar(
            lat['median'],
            r['top1'],
            xerr=[[lat['median'] - lat['q1']], [lat['q3'] - lat['median']]],
            fmt='o',
            capsize=3,
            label=name)
        ax.annotate(f"{name} ({base / lat['median']:.2f}x)",
                    (lat['median'], r['top1']),
                    textcoords='offset points', xytext=(6, 6))
    ax.set_xlabel('CPU latency, batch 1 (ms, median)')
    ax.set_ylabel('test top-1 (%)')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.margins(0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
