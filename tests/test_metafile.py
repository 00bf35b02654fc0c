"""model-index.yml: every config listed once, every listed config there, and
the paper's parameter counts equal to those of the configs' models."""
import glob
import os

import modelindex  # installed with mmpretrain (OpenMMLab's mim reads it)
import pytest
from conftest import ROOT

from mmmod.apis import load_config
from mmmod.utils import count_params


def load_index():
    cwd = os.getcwd()
    os.chdir(ROOT)  # metafiles name configs relative to the repo root
    try:
        index = modelindex.load('model-index.yml')
        index.build_models_with_collections()
        return index
    finally:
        os.chdir(cwd)


INDEX = load_index()
MODELS = list(INDEX.models)


def test_every_config_is_listed_once_and_exists():
    configs = {
        p for p in glob.glob('configs/**/*.py', root_dir=ROOT, recursive=True)
        if '/_base_/' not in p and not p.startswith('configs/demo/')
    }
    listed = [m.config for m in MODELS]
    assert len(listed) == len(set(listed))
    assert sorted(configs - set(listed)) == []    # configs not listed
    assert sorted(set(listed) - configs) == []    # listed, not there
    names = [m.name for m in MODELS]
    assert len(names) == len(set(names))
    for m in MODELS:
        assert m.name == m.config.rsplit('/', 1)[1][:-3]
        assert not m.weights, f'{m.name}: no weights are published'
        assert m.in_collection in {c.name for c in INDEX.collections}


def test_numbers_are_marked_as_the_papers():
    with_numbers = [m for m in MODELS if m.results or 'Parameters' in
                    m.metadata.data or 'FLOPs' in m.metadata.data]
    assert len(with_numbers) >= 40
    for m in with_numbers:
        note = m.metadata.data.get('Numbers', '')
        assert 'reported by the paper' in note and 'not reproduced' in note


WITH_PARAMS = [m for m in MODELS if 'Parameters' in m.metadata.data]


@pytest.mark.e2e
@pytest.mark.parametrize('model', WITH_PARAMS, ids=lambda m: m.name)
def test_params_match_the_configs_model(model):
    from mmengine.registry import MODELS as REGISTRY
    from mmengine.registry import init_default_scope

    cfg = load_config(str(ROOT / model.config))
    init_default_scope(cfg.default_scope)
    built = REGISTRY.build(cfg.model)
    params = count_params(built)
    if model.metadata.data.get('Parameters Exclude') == 'head':
        # the paper's slip (SPEC section 4): a baseline counted headless
        params -= count_params(built.head)
    assert params / 1e6 == pytest.approx(
        model.metadata.data['Parameters'] / 1e6, abs=0.01)
