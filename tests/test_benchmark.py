"""The benchmark: interleaved timing, the references (training form, floor,
skip bound), the spread check, the tables' arithmetic, the profiles and
tools/analysis/benchmark.py in every CPU mode. Speed itself is measured by
the tool, never asserted here."""
import json
import math
import re
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import tool

from mmmod.analysis import benchmark as bench
from mmmod.layers import MoDBlock
from mmmod.models import ResNetMoD_CIFAR
from mmmod.paper import SPEEDUPS
from mmmod.utils.timing import (SPREAD_LIMIT, FloorBlock,
                                   SelectionFloorBlock, floor_mod_blocks,
                                   measure_latency, measure_train_throughput,
                                   selection_floor_mod_blocks,
                                   paired_ratio, skip_mod_blocks,
                                   spread_warning, summarise, time_interleaved)

benchmark_tool = tool('analysis/benchmark')
BASELINE = 'configs/resnet_mod/baselines/resnet18_8xb32_in1k.py'
R34 = 'configs/resnet_mod/baselines/resnet34_8xb32_in1k.py'
MOD = 'configs/resnet_mod/resnet18-mod_8xb32_in1k.py'
TINY = ['--input-size', '32', '--warmup', '1', '--repeats', '2']


def test_time_interleaved_rotates_the_order():
    calls = []
    steps = {name: (lambda n=name: calls.append(n)) for name in 'abc'}
    out = time_interleaved(steps, warmup=2, repeats=4)
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert len(rounds) == 6  # warm-up rounds run, untimed
    assert all(sorted(r) == ['a', 'b', 'c'] for r in rounds)
    assert [r[0] for r in rounds] == ['a', 'b', 'c', 'a', 'b', 'c']
    assert [len(s['times']) for s in out.values()] == [4, 4, 4]


def test_summarise_quartiles():
    stats = summarise([5.0, 1.0, 100.0, 3.0, 2.0])
    assert (stats['median'], stats['q1'], stats['q3'], stats['min']) == (
        3.0, 2.0, 5.0, 1.0)
    with pytest.raises(ValueError, match='repeats'):
        time_interleaved({'a': lambda: None}, repeats=0)


def test_skip_bound_and_measurements():
    model = ResNetMoD_CIFAR(depth=18)
    skipped = skip_mod_blocks(model)
    assert not any(isinstance(m, MoDBlock) for m in skipped.modules())
    assert any(isinstance(m, MoDBlock) for m in model.modules())  # a copy
    models = {'mod': model, 'skip': skipped}
    lat = measure_latency(models, (3, 16, 16), warmup=1, repeats=3)
    before = [p.clone() for p in skipped.parameters()]
    train = measure_train_throughput(models, (3, 16, 16), batch_size=2,
                                     warmup=1, repeats=2)
    assert [len(s['times']) for s in lat.values()] == [3, 3]
    assert [len(s['times']) for s in train.values()] == [2, 2]
    assert train['mod']['images_per_s'] == pytest.approx(
        2e3 / train['mod']['median'])
    # the training steps did train
    assert any(not torch.equal(p, q)
               for p, q in zip(before, skipped.parameters()))


def test_floor_reads_the_map_and_adds_onto_k_channels():
    model = ResNetMoD_CIFAR(depth=18)
    model.eval()
    floor = floor_mod_blocks(model)
    blocks = [m for m in floor.modules() if isinstance(m, FloorBlock)]
    assert len(blocks) == 4 and not any(
        isinstance(m, MoDBlock) for m in floor.modules())
    block = blocks[0]
    x = torch.randn(2, 64, 8, 8)
    before = x.clone()
    with torch.no_grad():
        out = block(x)
    assert out is x  # in place, as the inference form
    k = block.k
    assert torch.equal(x[:, k:], before[:, k:])
    torch.testing.assert_close(
        x[:, :k], before[:, :k] + before.mean((2, 3))[:, :k, None, None])
    block.train()
    x = before.clone().requires_grad_()
    out = block(x)  # a new map, for autograd
    assert out is not x and torch.equal(x.detach(), before)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_floor_plus_selection_is_the_block_but_its_conv_block():
    model = ResNetMoD_CIFAR(depth=18)
    model.eval()
    mod = [m for m in model.modules() if isinstance(m, MoDBlock)][1]
    ref = selection_floor_mod_blocks(model)
    blocks = [m for m in ref.modules() if isinstance(m, SelectionFloorBlock)]
    assert len(blocks) == 4 and not any(
        isinstance(m, MoDBlock) for m in ref.modules())
    block = blocks[1]
    # the MoD block's own selector (a copy, as the model is)
    assert torch.equal(block.selector.fc1.weight, mod.selector.fc1.weight)
    assert block.selector.fc1.weight is not mod.selector.fc1.weight
    x = torch.randn(2, mod.channels, 8, 8)
    before = x.clone()
    scores, idx = mod.select(x)
    k = block.k
    with torch.no_grad(), torch.profiler.profile() as prof:
        out = block(x)
    assert out is x
    assert 'mmmod::select_channels' in {e.key for e in prof.key_averages()}
    chosen = before.gather(1, idx[:, :, None, None].expand(-1, -1, 8, 8))
    torch.testing.assert_close(
        x[:, :k], before[:, :k] + chosen * scores[:, :, None, None])
    assert torch.equal(x[:, k:], before[:, k:])
    block.train()
    x = before.clone().requires_grad_()
    block(x).sum().backward()  # a new map; the selector trains
    assert torch.equal(x.detach(), before)
    assert block.selector.fc2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('fusion', ['last-k', 'original'])
def test_floor_plus_selection_adds_where_the_mod_block_adds(fusion):
    mod = MoDBlock(64, lambda k: nn.Identity(), c=8, fusion=fusion)
    mod.eval()
    block = SelectionFloorBlock(mod).eval()
    x = torch.randn(2, 64, 5, 7)
    with torch.no_grad():
        want = mod(x)  # the MoD block with an identity Conv-Block
        out = block(x.clone())
    torch.testing.assert_close(out, want)
    block.train()
    torch.testing.assert_close(block(x), want)


def test_references_of_a_mod_model():
    from mmmod.layers import mod_blocks
    model = ResNetMoD_CIFAR(depth=18)
    model.eval()
    models = bench.with_references({'mod': model})
    assert list(models) == ['mod', 'mod' + bench.TRAIN_FORM,
                            'mod' + bench.FLOOR, 'mod' + bench.SELECTION,
                            'mod' + bench.SKIP]
    assert all(b.deploy for b in mod_blocks(models['mod']))
    assert models['mod' + bench.TRAIN_FORM] is model
    assert not any(b.deploy for b in mod_blocks(model))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outs = {n: m(x.clone())[-1] for n, m in models.items()}
    torch.testing.assert_close(outs['mod'], outs['mod' + bench.TRAIN_FORM],
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outs['mod'], outs['mod' + bench.FLOOR])
    assert not torch.allclose(outs['mod'], outs['mod' + bench.SELECTION])
    assert not torch.allclose(outs['mod' + bench.FLOOR],
                              outs['mod' + bench.SELECTION])
    assert not torch.allclose(outs['mod' + bench.FLOOR],
                              outs['mod' + bench.SKIP])


# --- the spread check --------------------------------------------------------


def test_spread_warning_fires_on_a_busy_machine_only():
    quiet = summarise([10.0, 10.2, 10.1, 9.9, 10.3, 10.0, 10.4, 10.1])
    # the demo's busy run (issue 12): quartiles [25, 98] around ~30 ms
    busy = summarise([24.0, 25.0, 26.0, 30.0, 31.0, 95.0, 98.0, 99.0])
    assert spread_warning({'resnet18': quiet, 'resnet18-mod': quiet}) is None
    text = spread_warning({'resnet18': busy, 'resnet18-mod': quiet})
    assert text and 'resnet18 (' in text and 'resnet18-mod' not in text
    assert 'rerun' in text and 'busy' in text
    # the rule is the interquartile range against the median
    edge = dict(median=100.0, q1=90.0, q3=90.0 + 100 * SPREAD_LIMIT)
    assert spread_warning({'m': edge}) is None
    assert spread_warning({'m': dict(edge, q3=edge['q3'] + 0.1)})


def test_every_table_names_the_cpu_and_its_vector_instructions():
    """Two VMs named 'AMD EPYC' can be CPUs with AVX-512 and without, whose
    inductor and oneDNN kernels differ: the machine line says which."""
    from mmmod.utils.timing import cpu_name, describe_machine
    line = describe_machine()
    assert line.startswith(cpu_name()) and 'threads' in line
    cpu = getattr(torch.backends, 'cpu', None)
    if hasattr(cpu, 'get_cpu_capability'):
        assert f'{cpu.get_cpu_capability()})' in cpu_name()


# --- the tables' arithmetic, on made-up timings ------------------------------


def _result(baseline, medians):
    """A benchmark result with the given latencies (ms): a number each
    round (three rounds), or a list of each round's."""
    timings = {
        name: dict(latency=summarise(ms if isinstance(ms, list) else [ms] * 3))
        for name, ms in medians.items()
    }
    models = {
        name: dict(params=1.0, gmacs=1.0,
                   bound=name + bench.SKIP
                   if name + bench.SKIP in medians else None,
                   floor=name + bench.FLOOR
                   if name + bench.FLOOR in medians else None,
                   selection=name + bench.SELECTION
                   if name + bench.SELECTION in medians else None)
        for name in medians
    }
    meta = dict(baseline=baseline, modes=['eager'], batch_sizes=[1])
    return dict(meta=meta, models=models, timings={'eager': {1: timings}},
                warnings=[])


def _rows(result):
    return {
        r[0]: dict(zip(bench.HEADER, r))
        for r in bench.table(result, 'eager', 1)
    }


def test_table_speedups_shares_and_paper_columns():
    rows = _rows(_result('resnet18', {
        'resnet18': 15.0, 'resnet18-mod': 10.0,
        'resnet18-mod' + bench.FLOOR: 8.0,
        'resnet18-mod' + bench.SELECTION: 9.0,
        'resnet18-mod' + bench.SKIP: 7.5
    }))
    assert rows['resnet18']['speed-up'] == '1.00x'
    assert rows['resnet18-mod']['speed-up'] == '1.50x'
    assert rows['resnet18-mod' + bench.SKIP]['speed-up'] == '2.00x'
    # 1.5 / 2.0 and 1.5 / 1.875
    assert rows['resnet18-mod']['share of skip bound'] == '75 %'
    assert rows['resnet18-mod']['share of floor'] == '80 %'
    assert rows['resnet18-mod']['share of floor + selection'] == '90 %'
    assert rows['resnet18']['share of skip bound'] == ''
    assert rows['resnet18']['share of floor'] == ''
    _, cpu, gpu = SPEEDUPS['resnet18-mod']
    assert rows['resnet18-mod']['paper CPU'] == f'{cpu:.2f}x'
    assert rows['resnet18-mod']['paper GPU'] == f'{gpu:.2f}x'
    assert rows['resnet18-mod' + bench.SKIP]['paper CPU'] == ''
    assert rows['resnet18']['paper CPU'] == ''
    # against a baseline the paper did not compare with: no paper numbers
    rows = _rows(_result('resnet34', {'resnet34': 30.0, 'resnet18-mod': 10.0}))
    assert rows['resnet18-mod']['speed-up'] == '3.00x'
    assert rows['resnet18-mod']['paper CPU'] == ''
    assert rows['resnet18-mod']['paper GPU'] == ''


def test_speedups_and_shares_pair_the_rounds():
    """Each ratio is the median over rounds of the two models' times in
    one round, not the ratio of their medians (minutes apart on a machine
    whose speed drifts), with its 95 % interval."""
    mod = [10.0, 20.0, 30.0, 12.0, 22.0, 32.0]
    rows = _rows(_result('resnet18', {
        'resnet18': [15.0, 30.0, 45.0, 18.0, 33.0, 48.0],  # 1.5x each round
        'resnet18-mod': mod,
        # 0.9, 0.75, 0.97, 0.9, 0.8, 0.9 of mod, which the machine drifts
        # under: the medians' ratio (16.3 / 21) would say 78 %
        'resnet18-mod' + bench.FLOOR: [9.0, 15.0, 29.0, 10.8, 17.6, 28.8],
    }))
    assert rows['resnet18-mod']['speed-up'] == '1.50x [1.50, 1.50]'
    # six rounds: the interval is the smallest and largest (96.9 %)
    assert rows['resnet18-mod']['share of floor'] == '90 % [75, 97]'
    assert rows['resnet18']['speed-up'] == '1.00x'
    rows = _rows(_result('a', {'a': [2.0] * 5, 'a-mod': [1.0] * 5}))
    assert rows['a-mod']['speed-up'] == '2.00x'  # too few rounds: no interval


@pytest.mark.parametrize('n, j', [(6, 1), (10, 2), (30, 10), (150, 63),
                                  (2000, 956)])
def test_paired_ratio_interval_is_the_binomial_one(n, j):
    """The order statistics of the sign test's interval for the median:
    ``j`` the largest with ``P(Binomial(n, 1/2) < j) <= 2.5 %`` (2000
    rounds: past a float's 2**1023)."""
    r = paired_ratio(list(range(n, 0, -1)), [1.0] * n)
    assert (r['low'], r['high']) == (j, n + 1 - j)
    below = sum(math.comb(n, i) for i in range(j)) / 2**n
    assert below <= 0.025 < below + math.comb(n, j) / 2**n


def test_paired_ratio_refuses_what_it_cannot_pair():
    with pytest.raises(ValueError, match='same rounds'):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match='no rounds'):
        paired_ratio([], [])
    for confidence in (0, 1, -2, 1.5):
        with pytest.raises(ValueError, match='confidence must be in'):
            paired_ratio([1.0] * 10, [1.0] * 10, confidence)


def test_report_from_a_saved_run(tmp_path, capsys):
    """--report prints a saved run's tables again, as the run did, without
    configs or timing; bad input is refused where it enters."""
    result = _result('resnet18', {'resnet18': [15.0, 30.0, 45.0],
                                  'resnet18-mod': [10.0, 20.0, 30.0]})
    result['meta'].update(machine='a CPU', input_shape=[3, 32, 32],
                          channels_last=False, repeats=3, warmup=1,
                          train_repeats=0, train_batch_sizes=[])
    saved = tmp_path / 'run.json'
    saved.write_text(json.dumps(result))
    out = tmp_path / 'again.md'
    benchmark_tool.main(['--report', str(saved), '--out', str(out)])
    assert out.read_text() == bench.report(result, markdown=True)
    assert bench.report(bench.load_result(str(saved))) == bench.report(result)
    assert json.loads(out.with_suffix('.json').read_text()) == \
        json.loads(saved.read_text())
    assert '1.50x' in capsys.readouterr().out
    # to the run's own tables: its .json (not the tool's indented form) stays
    benchmark_tool.main(['--report', str(saved), '--out',
                         str(saved.with_suffix('.md'))])
    assert saved.read_text() == json.dumps(result)
    assert saved.with_suffix('.md').read_text() == out.read_text()
    capsys.readouterr()
    bad = tmp_path / 'bad.json'
    for argv, message in (
            ([], 'either configs to time or --report'),
            ([BASELINE, '--report', str(saved)],
             'either configs to time or --report'),
            (['--report', str(saved), '--out', str(saved)],
             '--out: the path of the Markdown tables'),
            ([BASELINE, MOD, '--out', str(tmp_path / 'x.json')],
             '--out: the path of the Markdown tables'),
            (['--report', str(tmp_path / 'missing.json')],
             '--report: [Errno 2]'),
            (['--report', str(bad)], 'is not a run saved by the benchmark')):
        bad.write_text('[1, 2]')
        with pytest.raises(SystemExit):
            benchmark_tool.main(argv)
        assert message in capsys.readouterr().err, argv
    assert saved.read_text() == json.dumps(result)
    # not JSON; timings of the wrong type; a run without its meta
    broken = dict(result, meta={})
    for text in ('not json', json.dumps(dict(result, timings=[])),
                 json.dumps(broken)):
        bad.write_text(text)
        with pytest.raises(SystemExit):
            benchmark_tool.main(['--report', str(bad)])
        assert 'is not a run saved by the benchmark' in \
            capsys.readouterr().err


@pytest.mark.parametrize('run', sorted(
    p.stem for p in (Path(__file__).parents[1] / 'docs/benchmarks').glob(
        '*.json')))
def test_the_docs_tables_are_the_tools_output(run):
    """Each run in docs/benchmarks (its .json, as the tool saved it) and its
    tables (.md) agree: the tables are this version's report of that run,
    not numbers edited by hand."""
    path = Path(__file__).parents[1] / 'docs/benchmarks' / run
    assert path.with_suffix('.md').read_text() == bench.report(
        bench.load_result(str(path.with_suffix('.json'))), markdown=True)


def test_fastest_mode_table():
    result = _result('a', {'a': 4.0, 'b': 2.0})
    result['meta']['modes'] = ['eager', 'compile']
    result['timings']['compile'] = {
        1: {name: dict(latency=dict(median=ms)) for name, ms in
            dict(a=3.0, b=2.5).items()}
    }
    header, rows = bench.fastest_rows(result)
    assert header == ['model', 'batch', 'eager', 'compile', 'fastest']
    assert rows == [['a', '1', '4.00', '3.00', 'compile'],
                    ['b', '1', '2.00', '2.50', 'eager']]


# --- bad input ---------------------------------------------------------------


@pytest.mark.parametrize('argv, message', [
    (['--modes', 'eager', 'fast'], "--modes: unknown mode.*'fast'.*eager, "
     'compile, compile-freeze, compile-freeze-cpp, onnxruntime'),
    (['--modes', 'eager', 'eager'], '--modes: each mode once'),
    (['--batch-sizes', '0'], '--batch-sizes: must be positive integers'),
    (['--batch-sizes', '1', '1'], '--batch-sizes: each batch size once'),
    (['--batch-sizes', 'x'], "--batch-sizes: invalid int value: 'x'"),
    (['--batch-sizes', '1', '--train-batch-sizes', '8'],
     r'--train-batch-sizes: \[8\] must be among the batch sizes \[1\]'),
    (['--repeats', '0'], '--repeats: must be >= 1'),
    (['--warmup', '0'], '--warmup: must be >= 1'),
    (['--train-repeats', '-1'], '--train-repeats: must be >= 0'),
    (['--input-size', '1', '2', '3'], '--input-size takes S or H W'),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        benchmark_tool.parse_args([BASELINE, MOD] + argv)
    assert any(
        re.search(message, line)
        for line in capsys.readouterr().err.splitlines())


@pytest.mark.skipif(torch.cuda.is_available(), reason='a GPU is here')
def test_cuda_modes_without_a_gpu_are_refused(capsys):
    with pytest.raises(SystemExit):
        benchmark_tool.parse_args([BASELINE, MOD, '--modes', 'cuda-eager'])
    assert '--modes: cuda-eager need a CUDA device' in capsys.readouterr().err
    assert 'cuda-eager' not in bench.default_modes()


@pytest.mark.parametrize('version, runs', [
    ('2.1.2', False), ('2.14.0a0+git', False), ('2.14.1+cu130', True),
    ('2.15.0', True)])
def test_the_cpp_wrapper_mode_needs_torch_2_14(version, runs, monkeypatch,
                                               capsys):
    # torch 2.1's C++ wrapper takes no op with several outputs
    from torch.torch_version import TorchVersion
    monkeypatch.setattr(bench, 'TORCH_VERSION', TorchVersion(version))
    assert bench.runs_on_this_torch('compile-freeze-cpp') == runs
    # asked for by name only
    assert 'compile-freeze-cpp' not in bench.default_modes()
    assert 'compile-freeze-cpp' not in bench.Plan().modes
    assert 'compile-freeze' in bench.Plan().modes
    argv = [BASELINE, MOD, '--modes', 'eager', 'compile-freeze-cpp']
    if runs:
        assert benchmark_tool.parse_args(argv).plan.modes[1] == \
            'compile-freeze-cpp'
    else:
        with pytest.raises(SystemExit):
            benchmark_tool.parse_args(argv)
        assert ('--modes: compile-freeze-cpp needs torch >= 2.14, this is '
                in capsys.readouterr().err)


def test_two_configs_of_one_name_are_refused(capsys):
    with pytest.raises(SystemExit):
        benchmark_tool.parse_args([MOD, MOD])
    assert "two configs name the model 'resnet18-mod'" in \
        capsys.readouterr().err


# --- the tool, end to end ----------------------------------------------------


def _check_run(out, modes, batch_sizes, trains):
    """Every mode and batch size has the three rows; the Markdown cells are
    the arithmetic of the JSON timings."""
    raw = json.loads(out.with_suffix('.json').read_text())
    text = out.read_text()
    names = ['resnet18', 'resnet18-mod', 'resnet18-mod' + bench.TRAIN_FORM,
             'resnet18-mod' + bench.FLOOR, 'resnet18-mod' + bench.SELECTION,
             'resnet18-mod' + bench.SKIP]
    floor, selection, skip = names[3:6]
    assert list(raw['models']) == names
    assert raw['models']['resnet18-mod']['bound'] == skip
    assert raw['models']['resnet18-mod']['floor'] == floor
    assert raw['models']['resnet18-mod']['selection'] == selection
    assert raw['models']['resnet18']['params'] > \
        raw['models']['resnet18-mod']['params'] > \
        raw['models'][skip]['params']
    assert list(raw['timings']) == modes
    for mode in modes:
        assert list(raw['timings'][mode]) == [str(b) for b in batch_sizes]
        for batch in batch_sizes:
            t = raw['timings'][mode][str(batch)]
            assert list(t) == names
            assert all(len(r['latency']['times']) == 2 for r in t.values())
            # the inference form cannot train: its training form does
            assert all(('train' in r) == (mode in trains and batch == 2
                                          and n != 'resnet18-mod')
                       for n, r in t.items())
            def ratio(ref, name, key='latency'):
                """the median of ref / name round by round (two rounds:
                too few for an interval)"""
                return statistics.median(
                    r / x for r, x in zip(t[ref][key]['times'],
                                          t[name][key]['times']))

            section = text.split(f'## {mode}, batch {batch}:')[1]
            rows = {
                cells[0]: dict(zip(bench.HEADER, cells))
                for cells in (line[2:-2].split(' | ')
                              for line in section.splitlines()[4:10])
            }
            mod = rows['resnet18-mod']
            assert mod['speed-up'] == \
                f"{ratio('resnet18', 'resnet18-mod'):.2f}x"
            assert rows[skip]['speed-up'] == f"{ratio('resnet18', skip):.2f}x"
            for reference, column in ((skip, 'share of skip bound'),
                                      (floor, 'share of floor'),
                                      (selection,
                                       'share of floor + selection')):
                assert mod[column] == \
                    f"{100 * ratio(reference, 'resnet18-mod'):.0f} %"
            assert (mod['paper CPU'], mod['paper GPU']) == tuple(
                f'{p:.2f}x' for p in SPEEDUPS['resnet18-mod'][1:])
            if mode in trains and batch == 2:
                train_form = 'resnet18-mod' + bench.TRAIN_FORM
                assert mod['train img/s'] == \
                    f"{2e3 / t[train_form]['train']['median']:.1f}"
                assert mod['train speed-up'] == \
                    f"{ratio('resnet18', train_form, 'train'):.2f}x"
                assert mod['train share of floor'] == \
                    f"{100 * ratio(floor, train_form, 'train'):.0f} %"
                assert mod['train share of floor + selection'] == \
                    f"{100 * ratio(selection, train_form, 'train'):.0f} %"
    assert '## median ms in every mode' in text
    return raw


@pytest.mark.e2e
def test_tool_in_eager_and_onnxruntime(tmp_path, capsys):
    out = tmp_path / 'speed.md'
    benchmark_tool.main([
        BASELINE, MOD, *TINY, '--modes', 'eager', 'onnxruntime',
        '--batch-sizes', '1', '2', '--train-batch-sizes', '2',
        '--train-repeats', '1', '--train-warmup', '1', '--out',
        str(out)
    ])
    raw = _check_run(out, ['eager', 'onnxruntime'], [1, 2], ['eager'])
    assert raw['meta']['baseline'] == 'resnet18'
    stdout = capsys.readouterr().out
    assert '== onnxruntime, batch 2:' in stdout
    assert f'{torch.get_num_threads()} threads' in stdout
    assert 'self time per forward' not in stdout  # no --profile


@pytest.mark.e2e
def test_profiles_of_the_mod_model_beside_its_floor(tmp_path, capsys):
    out = tmp_path / 'speed.md'
    result = benchmark_tool.main([
        BASELINE, MOD, *TINY, '--modes', 'eager', 'onnxruntime',
        '--batch-sizes', '1', '--train-batch-sizes', '--profile', '2',
        '--out', str(out)
    ])
    # ops of the MoD machinery the floor has not
    for mode, mod_ops in (
            ('eager', {'mmmod::select_channels', 'mmmod::conv_chain'}),
            ('onnxruntime', {'TopK', 'Gather'})):
        t = result['timings'][mode][1]
        assert set(t) == {'resnet18', 'resnet18-mod',
                          'resnet18-mod' + bench.TRAIN_FORM,
                          'resnet18-mod' + bench.FLOOR,
                          'resnet18-mod' + bench.SELECTION,
                          'resnet18-mod' + bench.SKIP}
        profiled = {n for n, r in t.items() if 'profile' in r}
        assert profiled == {'resnet18-mod', 'resnet18-mod' + bench.FLOOR}
        ops = {row[0]: row for row in t['resnet18-mod']['profile']}
        floor_ops = {row[0] for row in t['resnet18-mod' + bench.FLOOR][
            'profile']}
        assert mod_ops <= set(ops), (mode, sorted(ops))
        assert not mod_ops & floor_ops
        # the MoD model's four MoD blocks, one call each per forward
        first = sorted(mod_ops)[0]
        assert ops[first][2] == 4 and ops[first][1] > 0
        (name, rows), = bench.profile_rows(result, mode, 1)
        assert name == 'resnet18-mod' and rows[-1][0] == 'all ops'
    text = out.read_text()
    assert text.count('self time per forward by op, beside its floor') == 2


@pytest.mark.e2e
def test_gpu_profile_counts_each_kernel_once():
    """On CUDA an op's self device time is the time of the kernels it
    launched, which are events of their own: the rows are the device's
    events alone (CPU ops and ops without GPU time left out), per
    forward; on CPU, self CPU time."""
    from types import SimpleNamespace as Event

    from torch.autograd import DeviceType
    cpu, gpu = DeviceType.CPU, DeviceType.CUDA
    events = [
        Event(key='aten::topk', device_type=cpu, self_device_time_total=30,
              self_cpu_time_total=8, count=2),
        Event(key='gatherTopK', device_type=gpu, self_device_time_total=20,
              self_cpu_time_total=0, count=2),
        Event(key='bitonicSort', device_type=gpu, self_device_time_total=10,
              self_cpu_time_total=0, count=2),
        Event(key='aten::view', device_type=cpu, self_device_time_total=0,
              self_cpu_time_total=2, count=4),
    ]
    assert bench._profile_rows(events, 2, cuda=True) == [
        ['gatherTopK', 10, 1], ['bitonicSort', 5, 1]]
    assert bench._profile_rows(events, 2, cuda=False) == [
        ['aten::topk', 4, 1], ['aten::view', 1, 2], ['gatherTopK', 0, 1],
        ['bitonicSort', 0, 1]]


def test_onnxruntime_mode_runs_the_exported_models():
    """The ONNX Runtime steps compute what the PyTorch models compute, each
    its own model (the skip bound is not the MoD model)."""
    model = ResNetMoD_CIFAR(depth=18, out_indices=(3, ))
    model.eval()
    models = bench.with_references({'mod': model})
    for m in models.values():
        m.eval()
    x = torch.randn(2, 3, 32, 32)
    steps = bench._onnxruntime_steps(models, x, bench.Plan(modes=['eager']))
    assert list(steps) == list(models)
    with torch.no_grad():
        refs = {name: m(x.clone())[0] for name, m in models.items()}
    assert not torch.allclose(refs['mod'], refs['mod' + bench.SKIP])
    assert not torch.allclose(refs['mod' + bench.FLOOR],
                              refs['mod' + bench.SKIP])
    for name, step in steps.items():
        (out, ) = step()
        assert torch.allclose(torch.from_numpy(out), refs[name], atol=1e-4)


@pytest.mark.e2e
def test_tool_mismatched_baseline_has_no_paper_columns(tmp_path):
    out = tmp_path / 'speed.md'
    result = benchmark_tool.main([
        R34, MOD, *TINY, '--modes', 'eager', '--batch-sizes', '1',
        '--train-batch-sizes', '--fuse-conv-bn', '--out',
        str(out)
    ])
    rows = {r[0]: dict(zip(bench.HEADER, r))
            for r in bench.table(result, 'eager', 1)}
    assert rows['resnet18-mod']['paper CPU'] == ''
    assert rows['resnet18-mod']['speed-up'] != ''
    assert 'fuse_conv_bn' in out.read_text().splitlines()[0]
    timings = result['timings']['eager'][1].values()
    assert all('train' not in r for r in timings)  # --train-batch-sizes none


def test_tool_folds_every_model():
    """--fuse-conv-bn: the baseline's BNs fold too (a fair deployment
    comparison), and those inside the MoD blocks' Conv-Blocks."""
    for fuse in (False, True):
        models = benchmark_tool.build_models(benchmark_tool.parse_args(
            [BASELINE, MOD] + ['--fuse-conv-bn'] * fuse))
        assert list(models) == ['resnet18', 'resnet18-mod']
        for model in models.values():
            has_bn = any(isinstance(m, torch.nn.BatchNorm2d)
                         for m in model.modules())
            assert has_bn != fuse


def test_tool_says_which_norms_stay_unfolded(capsys):
    """with_cp blocks do not trace: their BNs stay, and the tool says so
    rather than time them as folded."""
    models = benchmark_tool.build_models(benchmark_tool.parse_args(
        [BASELINE, MOD, '--fuse-conv-bn', '--cfg-options',
         'model.backbone.with_cp=True']))
    out = capsys.readouterr().out
    for name, model in models.items():
        left = sum(isinstance(m, torch.nn.BatchNorm2d)
                   for m in model.modules())
        assert left and f'{name}: {left} BN layers stay unfolded' in out


@pytest.mark.slow
def test_tool_in_the_compile_modes(tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    out = tmp_path / 'speed.md'
    result = benchmark_tool.main([
        BASELINE, MOD, *TINY, '--modes', 'compile', 'compile-freeze',
        '--batch-sizes', '2', '--train-batch-sizes', '2', '--train-repeats',
        '1', '--train-warmup', '1', '--profile', '1', '--out',
        str(out)
    ])
    _check_run(out, ['compile', 'compile-freeze'], [2], ['compile'])
    # both modes compiled, each its own graphs: 5 models x (inference,
    # frozen inference) + 4 trained models
    assert counters['stats']['unique_graphs'] >= 14
    # frozen for real: the network's convolutions prepacked for oneDNN with
    # BN folded in, which needs freezing set while dynamo traces, and only
    # in that mode
    for mode in ('compile', 'compile-freeze'):
        for name in ('resnet18-mod', 'resnet18-mod' + bench.FLOOR):
            ops = {row[0] for row in result['timings'][mode][2][name][
                'profile']}
            assert (('mkldnn::_convolution_pointwise' in ops) ==
                    (mode == 'compile-freeze')), (mode, name, sorted(ops))
    # freezing held for that mode, not process-wide
    assert torch._inductor.config.freezing is False


@pytest.mark.slow
@pytest.mark.skipif(not bench.runs_on_this_torch('compile-freeze-cpp'),
                    reason='the C++ wrapper mode needs torch >= 2.14')
def test_tool_in_the_cpp_wrapper_mode(tmp_path):
    out = tmp_path / 'speed.md'
    result = benchmark_tool.main([
        BASELINE, MOD, *TINY, '--modes', 'compile-freeze-cpp',
        '--batch-sizes', '1', '--train-batch-sizes', '--profile', '1',
        '--out', str(out)
    ])
    _check_run(out, ['compile-freeze-cpp'], [1], [])
    # the MoD ops run, called from the generated C++ through the dispatcher
    ops = {row[0] for row in result['timings']['compile-freeze-cpp'][1][
        'resnet18-mod']['profile']}
    assert {'mmmod::select_channels', 'mmmod::conv_chain'} <= ops, ops
    assert torch._inductor.config.cpp_wrapper is False


@pytest.mark.slow
def test_compile_mode_compiles_every_model_at_every_batch_size():
    """More graphs than dynamo's default limit of 8 per code object (these
    models share Sequential.forward): none may silently run eager."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    models = {
        f'net{c}': torch.nn.Sequential(torch.nn.Conv2d(3, c, 3),
                                       torch.nn.ReLU())
        for c in range(1, 6)
    }
    plan = bench.Plan(modes=['compile'], batch_sizes=[1, 2, 3],
                      input_shape=(3, 8, 8), warmup=1, repeats=1,
                      train_repeats=0)
    result = bench.benchmark(models, plan, log=lambda line: None)
    assert list(result['timings']['compile']) == [1, 2, 3]
    assert counters['stats']['unique_graphs'] == 5 * 3


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('modes,trains', [
    (['cuda-eager', 'cuda-graphs', 'cuda-compile-graphs'], ['cuda-eager']),
    (['cuda-compile'], []),
    # inductor's stride assertion on convolution_backward's weight gradient
    # at 1x1 maps (docs/speed.md)
    pytest.param(['cuda-compile'], ['cuda-compile'], marks=pytest.mark.xfail(
        reason='pytorch/pytorch#171622: channels-last predicted, contiguous '
        'returned', strict=False)),
])
def test_tool_in_the_cuda_modes(modes, trains, tmp_path):
    out = tmp_path / 'speed.md'
    benchmark_tool.main([
        BASELINE, MOD, *TINY, '--modes', *modes, '--batch-sizes', '1', '2',
        '--train-batch-sizes', *(['2'] if trains else []), '--train-repeats',
        '1', '--train-warmup', '1', '--profile', '1', '--out',
        str(out)
    ])
    _check_run(out, modes, [1, 2], trains)


@pytest.mark.slow
def test_conv_chain_speed_tool(tmp_path):
    """tools/analysis/conv_chain_speed.py times every MoD block's
    Conv-Block three ways on its own input shape."""
    speed = tool('analysis/conv_chain_speed')
    out = tmp_path / 'chain.md'
    rows = speed.main([MOD, '--input-size', '64', '--batch-sizes', '1', '2',
                       '--warmup', '1', '--repeats', '2', '--out', str(out)])
    cells = [dict(zip(speed.HEADER, r)) for r in rows]
    # ResNet18-MoD: one MoD block per stage, k = 1, 2, 4, 8 at c = 64
    assert [c['k'] for c in cells] == ['1', '1', '2', '2', '4', '4', '8', '8']
    assert [c['batch'] for c in cells] == ['1', '2'] * 4
    assert [c['map'] for c in cells[::2]] == ['16x16', '8x8', '4x4', '2x2']
    assert all(c['chosen'] == 'yes' for c in cells)
    assert cells[0]['MACs/pixel'] == '18'  # two 3x3 convs on one channel
    assert all(float(c[k]) > 0 for c in cells
               for k in ('oneDNN us', 'inductor us', 'conv_chain us'))
    assert 'MoD block' in out.read_text().splitlines()[2]
