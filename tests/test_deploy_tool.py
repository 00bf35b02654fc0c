"""tools/deployment/switch_to_deploy.py: it never writes over the trained
checkpoint (same path, symlink, hard link), and it converts a checkpoint
whatever its ``meta``."""
import os

import pytest
import torch
from conftest import ROOT, tool

CONFIG = str(ROOT / 'configs/cifar/resnet18-mod_8xb16_cifar10.py')


@pytest.fixture(scope='module')
def converter():
    return tool('deployment/switch_to_deploy')


@pytest.mark.parametrize('link', ['same', 'symlink', 'hardlink'])
def test_dst_that_is_the_checkpoint_is_refused(converter, tmp_path, link):
    ckpt = tmp_path / 'trained.pth'
    ckpt.write_bytes(b'the trained weights')
    dst = tmp_path / 'dst.pth'
    if link == 'same':
        dst = ckpt
    elif link == 'symlink':
        os.symlink(ckpt, dst)
    else:
        os.link(ckpt, dst)
    with pytest.raises(ValueError, match='new file'):
        converter.convert(CONFIG, str(ckpt), str(dst))
    assert ckpt.read_bytes() == b'the trained weights'


def test_checkpoint_without_meta_converts(converter, tmp_path):
    from mmmod.apis import build_model
    model, _ = build_model(CONFIG)
    for meta in ('none', None):
        ckpt = tmp_path / f'{meta}.pth'
        torch.save(dict(state_dict=model.state_dict())
                   if meta == 'none' else
                   dict(state_dict=model.state_dict(), meta=meta), ckpt)
        dst = tmp_path / f'{meta}_deploy.pth'
        assert converter.convert(CONFIG, str(ckpt), str(dst)) > 0
        saved = torch.load(dst, weights_only=True)
        assert saved['meta'] == dict(deploy=True, deploy_config=CONFIG)


def test_a_form_mismatch_is_named_when_loading(converter, tmp_path):
    """A converted checkpoint into a model built without deploy=True, and a
    trained one into a model built with it: the error names the cause, not
    "another config"."""
    from mmmod.apis import build_model
    model, _ = build_model(CONFIG)
    trained = tmp_path / 'trained.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), trained)
    converted = tmp_path / 'deploy.pth'
    converter.convert(CONFIG, str(trained), str(converted))
    with pytest.raises(ValueError, match='(?s)not fit.*written by tools/'
                       'deployment/switch_to_deploy.py.*deploy=True'):
        build_model(CONFIG, str(converted))
    deploy = ['model.backbone.deploy=True']
    with pytest.raises(ValueError, match='(?s)not fit.*model is in its '
                       'inference form.*convert it'):
        build_model(CONFIG, str(trained), cfg_options=deploy)
    build_model(CONFIG, str(converted), cfg_options=deploy)  # the pair fits
    # a stock model has no inference form to name: another config
    stock = CONFIG.replace('resnet18-mod_', 'resnet18_')
    with pytest.raises(ValueError, match='(?s)not fit.*another config') as e:
        build_model(stock, str(converted))
    assert 'deploy=True' not in str(e.value)
