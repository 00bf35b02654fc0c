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
import pickle
import re
from contextlib import contextmanager
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
        # the loader expands '~' (mmengine's load_from_local)
        if '://' not in path and not osp.isfile(osp.expanduser(path)):
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


# --- checkpoints are data ---------------------------------------------------
#
# torch >= 2.6 loads with ``weights_only=True``: tensors, containers and
# plain values, never code. mmengine's checkpoints hold a few more types,
# allowed here by name and nothing else, so that resume, ``load_from``,
# ``Pretrained`` and warm starts load as data.

#: The tools' option that loads a checkpoint as any pickle (code included).
TRUST_FLAG = '--trust-checkpoint'

# HistoryBuffer's statistics, which its pickle fetches with getattr
_HISTORY_METHODS = ('min', 'max', 'current', 'mean')
_TRUE = ('1', 'y', 'yes', 'true')  # as torch reads its variables
_allowed = False
_history_buffer_data = None


def _trusted():
    return os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD',
                          '').lower() in _TRUE


def _history_buffer():
    """What a checkpoint's ``HistoryBuffer`` unpickles as: a plain
    HistoryBuffer, but the checkpoint's table of statistics methods is not
    merged into the class-wide one that every HistoryBuffer of the process
    shares (mmengine's ``__setstate__`` does merge it, whatever it holds)."""
    global _history_buffer_data
    if _history_buffer_data is None:
        from mmengine.logging import HistoryBuffer

        class HistoryBufferData(HistoryBuffer):

            def __setstate__(self, state):
                state = dict(state)
                state.pop('statistics_methods', None)
                self.__class__ = HistoryBuffer
                self._set_default_statistics()
                self.__dict__.update(state)

        _history_buffer_data = HistoryBufferData
    return _history_buffer_data


class CheckpointNotDataError(pickle.UnpicklingError):
    """A checkpoint holds more than data: loading it would run code."""


def _history_getattr(obj, name):
    """``getattr`` as mmengine's pickles use it, and only so: a
    ``HistoryBuffer`` statistics method (the buffer pickles the methods it
    computes with as ``getattr(HistoryBuffer, 'mean')``)."""
    from mmengine.logging import HistoryBuffer
    if obj in (HistoryBuffer, _history_buffer()) and name in _HISTORY_METHODS:
        return getattr(HistoryBuffer, name)
    raise CheckpointNotDataError(
        f'the checkpoint asks for getattr({obj!r}, {name!r}); only '
        "HistoryBuffer's statistics methods are data")


def checkpoint_globals() -> list:
    """The types (and functions that rebuild them) that mmengine's
    checkpoints hold beyond torch's default allowlist, as
    ``torch.serialization.add_safe_globals`` takes them: the message hub's
    ``HistoryBuffer`` (with the ``getattr`` its pickle calls, narrowed to
    its statistics methods) and numpy's arrays, scalars and dtypes, under
    numpy 1's and numpy 2's module names."""
    import numpy as np
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    entries = [(_history_buffer(),
                'mmengine.logging.history_buffer.HistoryBuffer'),
               (_history_getattr, 'builtins.getattr'), np.ndarray, np.dtype]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries += [(multiarray._reconstruct, f'{module}._reconstruct'),
                    (multiarray.scalar, f'{module}.scalar')]
    # a dtype's pickle BUILDs an instance of its class (numpy.dtypes.*)
    entries += sorted({type(np.dtype(c)) for c in np.typecodes['All']},
                      key=str)
    return entries


def allow_checkpoint_data():
    """Let ``torch.load(weights_only=True)`` read mmengine's checkpoints:
    add :func:`checkpoint_globals` to torch's allowlist (once). Every other
    type stays refused. mmengine loads URLs (``http(s)://``,
    ``torchvision://``, ``open-mmlab://``) through torch.hub, which unpickles
    anything by default: from here on they load with ``weights_only`` too
    (unless :func:`trust_checkpoints` was asked)."""
    global _allowed
    import torch
    if _allowed or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    torch.serialization.add_safe_globals(checkpoint_globals())
    import mmengine.runner.checkpoint as loader
    url_load = loader.load_url

    def load_url(url, *args, **kwargs):
        if not _trusted():
            kwargs['weights_only'] = True
        return url_load(url, *args, **kwargs)

    loader.load_url = load_url
    _allowed = True


def trust_checkpoints():
    """Load every checkpoint of this process as any pickle, as torch < 2.6
    did: for files the user trusts, on the user's explicit request (the
    tools' ``--trust-checkpoint``), never by default."""
    os.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = '1'


def add_trust_flag(parser):
    """The tools' opt-in :data:`TRUST_FLAG`; :func:`apply_trust_flag` acts
    on it."""
    parser.add_argument(
        TRUST_FLAG, action='store_true',
        help='load checkpoints as any pickle, which can run code: only for '
        'files you trust (default: as data; anything else is refused)')


def apply_trust_flag(args):
    if getattr(args, TRUST_FLAG[2:].replace('-', '_'), False):
        trust_checkpoints()


def check_checkpoint_is_data(path):
    """Raise :class:`CheckpointNotDataError` naming the types that local
    checkpoint ``path`` holds beyond data (read from its pickles without
    running them), in torch's zip format and in its legacy (non-zip) one;
    URLs are checked when loaded (:func:`allow_checkpoint_data`). Nothing to
    check once :func:`trust_checkpoints` was asked."""
    import torch
    if '://' in path:
        return
    local = osp.expanduser(path)  # as the loader reads it
    if (not osp.isfile(local) or _trusted()
            or not hasattr(torch.serialization,
                           'get_unsafe_globals_in_checkpoint')):
        return
    allow_checkpoint_data()
    with open(local, 'rb') as f:
        is_zip = f.read(4) == b'PK\x03\x04'
    if is_zip:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(
                local)
        except (RuntimeError, ValueError, pickle.UnpicklingError):
            return  # not a torch.save zip (TorchScript, ...): torch decides
    else:
        unsafe = _unsafe_globals_in_legacy_checkpoint(local)
    if unsafe:
        raise CheckpointNotDataError(not_data_message(path, sorted(unsafe)))


# the pickles of torch's legacy (non-zip) format, in the order torch.load
# reads them: magic number, protocol version, sys info, the object, the
# storage keys (the storages' bytes follow)
_LEGACY_PICKLES = 5


def _unsafe_globals_in_legacy_checkpoint(path):
    """The globals that the pickles of ``path``, a checkpoint in torch's
    legacy format, name beyond torch's allowlist (and
    :func:`checkpoint_globals`): read statically (``pickletools``), nothing
    is unpickled. Empty when ``path`` is not in that format (torch.load
    decides)."""
    import pickletools

    import torch
    try:
        from torch import _weights_only_unpickler as wo
        safe = set(wo._get_allowed_globals())
        safe |= set(getattr(wo, '_get_user_allowed_globals', dict)())
    except (ImportError, AttributeError):
        return set()
    found = set()
    with open(path, 'rb') as f:
        for i in range(_LEGACY_PICKLES):
            try:
                ops = list(pickletools.genops(f))
            except Exception:  # noqa: BLE001 a corrupt/truncated pickle
                break  # what was read is checked; torch.load decides
            if i == 0 and not any(
                    arg == torch.serialization.MAGIC_NUMBER
                    for _, arg, _ in ops):
                return set()  # not a legacy checkpoint
            found |= _pickle_globals(ops)
    return found - safe


def _pickle_globals(ops):
    """``module.name`` of every global that ``ops`` (pickletools.genops)
    imports: GLOBAL's argument, STACK_GLOBAL's two strings (tracked through
    the memo); a STACK_GLOBAL whose strings are not known counts as
    unsafe."""
    try:  # python 2 names, as torch's weights_only unpickler maps them
        from torch._utils import IMPORT_MAPPING, NAME_MAPPING
    except ImportError:
        from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
    found, stack, memo = set(), [], {}
    for op, arg, _ in ops:
        name = op.name
        if name == 'GLOBAL':
            module, attr = arg.split(' ', 1)
            if (module, attr) in NAME_MAPPING:
                module, attr = NAME_MAPPING[(module, attr)]
            elif module in IMPORT_MAPPING:
                module = IMPORT_MAPPING[module]
            found.add(f'{module}.{attr}')
            stack.append(None)
        elif name == 'STACK_GLOBAL':
            module, attr = (stack[-2:] if len(stack) >= 2 else (None, None))
            found.add(f'{module}.{attr}' if isinstance(module, str)
                      and isinstance(attr, str) else 'STACK_GLOBAL(?)')
            stack[-2:] = [None]
        elif name in ('SHORT_BINUNICODE', 'BINUNICODE', 'BINUNICODE8',
                      'UNICODE', 'SHORT_BINSTRING', 'BINSTRING', 'STRING'):
            stack.append(arg if isinstance(arg, str) else None)
        elif name == 'MEMOIZE':
            memo[len(memo)] = stack[-1] if stack else None
        elif name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
            memo[arg] = stack[-1] if stack else None
        elif name in ('GET', 'BINGET', 'LONG_BINGET'):
            stack.append(memo.get(arg))
        elif name not in ('PROTO', 'FRAME', 'STOP'):
            stack.append(None)  # (only the strings before a global matter)
    return found


def not_data_message(path, types):
    return (f'{path} holds {", ".join(types)}: not data (tensors, numbers, '
            "containers, numpy arrays, mmengine's log buffers), so loading it "
            'could run code, and it was not loaded. If you trust the file, '
            f'load it anyway with {TRUST_FLAG}.')


@contextmanager
def checkpoints_as_data():
    """Loads inside (the runner's, ``init_weights``') read checkpoints as
    data (:func:`allow_checkpoint_data`); a refusal becomes one
    :class:`CheckpointNotDataError` that names the opt-in."""
    allow_checkpoint_data()
    try:
        yield
    except CheckpointNotDataError:
        raise
    except pickle.UnpicklingError as e:
        found = refused_global(str(e))
        if not found:  # another unpickling problem (a corrupt file, ...)
            raise
        raise CheckpointNotDataError(
            not_data_message('a checkpoint of this run', [found])) from e


# how torch's weights_only unpickler words a refused global, torch 2.1-2.15:
# not allowlisted (2.4+), of a blocked module such as os/posix/subprocess
# (2.5+), an unsupported class (2.1-2.3); and mmmod's own getattr
_REFUSALS = (
    r'GLOBAL (\S+) was not an allowed global',
    r'GLOBAL (\S+) whose module \S+ is blocked',
    r'Unsupported class (\S+)',
    r'(getattr\(.*?\)); only',
)


def refused_global(message):
    """The global that a weights_only refusal ``message`` names, else
    None."""
    for pattern in _REFUSALS:
        found = re.search(pattern, message)
        if found:
            return found[1].rstrip('.')
    return None
