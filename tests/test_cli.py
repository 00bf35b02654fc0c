"""The options the tools share (mmmod.apis.cli): every tool that takes one
checks it the same way, with a usage error that names it."""
import os

import pytest
from conftest import tool

R18 = 'configs/resnet_mod/resnet18-mod_8xb32_in1k.py'

# (tool, its positional arguments) for the tools with --input-size
SIZED = [('analysis/benchmark', [R18]), ('analysis/complexity', [R18]),
         ('deployment/export_onnx', [R18]),
         ('analysis/conv_chain_speed', [R18]),
         ('analysis/gather_seeds', ['work_dirs/r18'])]
THREADED = [t for t in SIZED
            if t[0] not in ('analysis/complexity', 'analysis/gather_seeds')]


@pytest.mark.parametrize('name,positional', SIZED)
@pytest.mark.parametrize('size', [['0'], ['1', '2', '3']])
def test_bad_input_size_is_a_usage_error(name, positional, size, capsys):
    with pytest.raises(SystemExit) as err:
        tool(name).parse_args(positional + ['--input-size', *size])
    assert err.value.code == 2
    assert '--input-size takes S or H W' in capsys.readouterr().err


@pytest.mark.parametrize('name,positional', SIZED)
def test_input_size_becomes_height_and_width(name, positional):
    args = tool(name).parse_args(positional + ['--input-size', '64', '96'])
    assert args.input_size == (64, 96)
    default = 32 if name == 'analysis/gather_seeds' else 224  # CIFAR's
    assert tool(name).parse_args(positional).input_size == (default,) * 2


@pytest.mark.parametrize('name,positional', THREADED)
def test_threads_below_one_is_a_usage_error(name, positional, capsys):
    with pytest.raises(SystemExit):
        tool(name).parse_args(positional + ['--threads', '0'])
    assert '--threads must be >= 1' in capsys.readouterr().err


@pytest.mark.parametrize('name', ['train', 'test'])
def test_run_options_of_train_and_test(name, monkeypatch):
    # set then deleted: monkeypatch removes what the tool sets afterwards
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.delenv('LOCAL_RANK')
    positional = [R18] + (['ckpt.pth'] if name == 'test' else [])
    args = tool(name).parse_args(positional + [
        '--launcher', 'pytorch', '--local-rank', '3', '--partial-load',
        '--preflight', '--cfg-options', 'a=1', 'b=2'])
    assert (args.launcher, args.local_rank) == ('pytorch', 3)
    assert args.partial_load and args.preflight
    assert args.cfg_options == ['a=1', 'b=2']
    assert os.environ['LOCAL_RANK'] == '3'


def test_close_distributed_frees_the_process_group_of_a_finished_run(
        tmp_path):
    """A finished runner, unreachable but in reference cycles (as mmengine's
    is), holds its DDP wrapper and so the process group: close_distributed
    collects it before tearing the group down, rather than leaving both to
    interpreter shutdown."""
    import gc
    import weakref

    import torch
    import torch.distributed as dist
    from mmmod.apis.runner import close_distributed

    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store',
                            rank=0, world_size=1)
    enabled = gc.isenabled()
    gc.disable()  # (the test decides when cycles are collected)
    try:
        class Run:  # a runner in a cycle with its model
            pass

        run = Run()
        run.model = torch.nn.parallel.DistributedDataParallel(
            torch.nn.Linear(2, 2))
        run.self = run
        ddp = weakref.ref(run.model)
        del run
        assert ddp() is not None  # (kept by the cycle alone)
        close_distributed()
        assert ddp() is None
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if enabled:
            gc.enable()
