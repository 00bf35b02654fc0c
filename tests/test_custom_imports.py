"""A user's existing config, with ``custom_imports`` and the backbone ``type``
changed, builds in each toolbox (a fresh process: nothing imported first),
and the backbone is that toolbox's own ResNet class with MoD blocks."""
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.e2e

# scope: (stock config, the backbone type, the stock class it extends)
CASES = {
    'mmpretrain': ("mmpretrain::resnet/resnet50_8xb32_in1k.py", 'ResNetMoD',
                   'ResNet'),
    'mmseg': ("mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py",
              'ResNetV1cMoD', 'ResNetV1c'),
    'mmdet': ("mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py",
              'ResNetMoD', 'ResNet'),
}


@pytest.mark.parametrize('scope', sorted(CASES))
def test_stock_config_with_custom_imports(scope, tmp_path):
    base, mod_type, stock_type = CASES[scope]
    cfg = tmp_path / 'user_config.py'
    cfg.write_text(textwrap.dedent(f"""
        _base_ = '{base}'
        custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)
        model = dict(backbone=dict(type={mod_type!r}))
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
        print(isinstance(backbone, MODELS.get({stock_type!r})))
        print(type(backbone).__module__)
        backbone.eval()
        with torch.no_grad():
            outs = backbone(torch.randn(1, 3, 64, 64))
        print(len(outs), outs[-1].shape[1])
    """)
    out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    assert lines[:2] == [mod_type, 'True']
    # mmpretrain's classes are in resnet_mod, the others in <scope>_resnet_mod
    assert lines[2].startswith('mmmod.models.backbones.')
    assert (scope in lines[2]) == (scope != 'mmpretrain')
    n_outs = {'mmpretrain': 1, 'mmseg': 4, 'mmdet': 4}[scope]
    assert lines[3:] == [str(n_outs), '2048']
