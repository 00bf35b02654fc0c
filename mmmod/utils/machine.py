"""What the tools say about the machine their numbers come from."""
import os
import platform


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what
    ``platform`` knows."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_cpu() -> str:
    """E.g. 'AMD EPYC 7B13, 2 cores, 2 torch threads'."""
    import torch
    return (f'{cpu_name()}, {os.cpu_count()} cores, '
            f'{torch.get_num_threads()} torch threads')
