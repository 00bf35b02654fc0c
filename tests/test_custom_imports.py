"""A user's existing config, with ``custom_imports`` and the backbone ``type``
changed, builds in each toolbox (a fresh process: nothing imported first)."""
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.e2e

CASES = {
    'mmpretrain': ("mmpretrain::resnet/resnet50_8xb32_in1k.py",
                   "dict(backbone=dict(type='ResNetMoD'))", 'ResNetMoD'),
    'mmseg': ("mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py",
              "dict(backbone=dict(type='ResNetV1cMoD'))", 'ResNetV1cMoD'),
    'mmdet': ("mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py",
              "dict(backbone=dict(type='ResNetMoD'))", 'ResNetMoD'),
}


@pytest.mark.parametrize('scope', sorted(CASES))
def test_stock_config_with_custom_imports(scope, tmp_path):
    base, model, expected = CASES[scope]
    cfg = tmp_path / 'user_config.py'
    cfg.write_text(textwrap.dedent(f"""
        _base_ = '{base}'
        custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)
        model = {model}
    """))
    script = textwrap.dedent(f"""
        import sys, torch
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        cfg = Config.fromfile({str(cfg)!r})
        assert 'mmmod' in sys.modules
        init_default_scope(cfg.default_scope)
        from {scope}.registry import MODELS
        model = MODELS.build(cfg.model)
        backbone = model.backbone
        print(type(backbone).__name__)
        backbone.eval()
        with torch.no_grad():
            outs = backbone(torch.randn(1, 3, 64, 64))
        print(len(outs), outs[-1].shape[1])
    """)
    out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    assert lines[0] == expected
    n_outs = {'mmpretrain': 1, 'mmseg': 4, 'mmdet': 4}[scope]
    assert lines[1:] == [str(n_outs), '2048']
