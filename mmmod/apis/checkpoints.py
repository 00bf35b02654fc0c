"""The checkpoints a config starts from: found before anything is built, or
one message that says what to do.

A MoD config for a downstream task starts from an ImageNet MoD classifier
that the user trains first (``work_dirs/<imagenet config>/epoch_100.pth``).
When that file is not there, every rank would build the whole model and
dataset and then die in ``init_weights``; :func:`check_checkpoints` stops
first and names the two ways on: train that classifier, or use the config
that warm-starts the MoD backbone from the stock ImageNet ResNet (the
config's ``stock_init_config``, a config name).
"""
import os
import os.path as osp
import re
from glob import glob

# init_cfg types that load their ``checkpoint`` in init_weights
CHECKPOINT_INITS = ('Pretrained', 'WarmStartFromResNet')


def config_checkpoints(cfg, init_weights=True):
    """``(key, path)`` of every checkpoint that a run of ``cfg`` loads:
    ``load_from`` and, if the run initialises the weights (training does,
    testing does not), the ``checkpoint`` of a ``Pretrained`` /
    ``WarmStartFromResNet`` init_cfg and any ``pretrained`` string at any
    depth of ``cfg.model``."""
    found = []
    if init_weights:
        _find_checkpoints(cfg.get('model'), 'model', found)
    if isinstance(cfg.get('load_from'), str):
        found.append(('load_from', cfg.load_from))
    return found


def _find_checkpoints(node, key, found):
    if isinstance(node, dict):
        if (node.get('type') in CHECKPOINT_INITS
                and isinstance(node.get('checkpoint'), str)):
            found.append((f'{key}.checkpoint', node['checkpoint']))
        for name, value in node.items():
            if name == 'pretrained' and isinstance(value, str):
                found.append((f'{key}.pretrained', value))
            else:
                _find_checkpoints(value, f'{key}.{name}', found)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _find_checkpoints(value, f'{key}.{i}', found)


def check_checkpoints(cfg, init_weights=True):
    """Raise FileNotFoundError if a local checkpoint that a run of ``cfg``
    loads (see :func:`config_checkpoints`) does not exist, with the two
    ways on (:func:`missing_checkpoint_message`). Checkpoints behind a
    scheme (``torchvision://``, ``open-mmlab://``, http) are the loader's
    business."""
    for key, path in config_checkpoints(cfg, init_weights):
        if '://' not in path and not osp.isfile(path):
            raise FileNotFoundError(missing_checkpoint_message(cfg, key, path))


def missing_checkpoint_message(cfg, key, path):
    """What to do when ``cfg``'s ``key`` names ``path`` and it is not there.

    In a distributed run every process stops here and says it all: the
    launcher stops the others when the first one fails, maybe before they
    print.
    """
    config = cfg.filename or 'the config'
    configs = _configs_dir(config)
    # work_dirs/<config name>/epoch_100.pth is what that config's run writes
    trains = _find_config(configs, osp.basename(osp.dirname(path)))
    way1 = ('train the model that writes it:\n'
            f'       {_train_command(trains, _gpus_of(trains))}'
            if trains else
            'make it: train the model it comes from, or copy it there')
    stock = cfg.get('stock_init_config')
    stock_path = _find_config(configs, stock) if stock else None
    if stock_path and osp.abspath(stock_path) != osp.abspath(config):
        way2 = ('use the config that starts from the stock ImageNet ResNet '
                '(no ImageNet MoD run needed):\n'
                f'       {_train_command(stock_path, _world_size())}')
    else:
        way2 = ('start from the stock ImageNet ResNet (no ImageNet MoD run '
                "needed): set the backbone's init_cfg=dict(type="
                "'WarmStartFromResNet', checkpoint='torchvision://resnet50') "
                "for the 7x7 stem, checkpoint='open-mmlab://resnet50_v1c' "
                'for the V1c deep stem (other depths likewise)')
    return (f'{key}: {path} does not exist. {config} starts from this '
            'checkpoint; two ways on:\n'
            f'  1. {way1}\n'
            f'  2. or {way2}\n'
            f'If you have the checkpoint elsewhere: --cfg-options {key}=PATH')


def _configs_dir(config):
    """The ``configs`` folder that holds ``config``, else ./configs."""
    folder = osp.dirname(osp.abspath(config))
    while osp.basename(folder) != 'configs':
        parent = osp.dirname(folder)
        if parent == folder:
            return 'configs'
        folder = parent
    return folder


def _find_config(configs, name):
    """``<configs>/**/<name>.py`` as the user would type it (relative to
    the working directory when inside it), or None."""
    if not name:
        return None
    hits = sorted(glob(osp.join(configs, '**', f'{name}.py'),
                       recursive=True))
    if not hits:
        return None
    rel = osp.relpath(hits[0])
    return hits[0] if rel.startswith('..') else rel


def _gpus_of(config):
    """8 for ``..._8xb32_in1k.py``: the GPUs its recipe is written for."""
    m = re.search(r'_(\d+)xb\d+', osp.basename(config))
    return int(m[1]) if m else 1


def _world_size():
    """The number of processes of this run (the user's own GPU count)."""
    return int(os.environ.get('WORLD_SIZE', 1))


def _train_command(config, gpus):
    if gpus > 1:
        return f'tools/dist_train.sh {config} {gpus}'
    return f'python tools/train.py {config}'
