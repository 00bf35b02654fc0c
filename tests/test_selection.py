"""tools/analysis/selection.py: what a CIFAR ResNet18-MoD's blocks select on
a tiny image folder, checked against each block's own top-k."""
import json

import numpy as np
import pytest
import torch
from conftest import tool
from PIL import Image

from mmmod.analysis import (Selection, SelectionRecorder, load_samples,
                            summarise)
from mmmod.apis import load_config
from mmmod.layers import MoDBlock

selection = tool('analysis/selection')

# A CIFAR ResNet18-MoD; --images only takes the test pipeline from the data
# settings, so the CIFAR data need not exist.
CONFIG = """
_base_ = ['mmpretrain::resnet/resnet18_8xb16_cifar10.py']
custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)
model = dict(backbone=dict(type='ResNetMoD_CIFAR'))
"""
N = 6


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    from mmengine.registry import MODELS, init_default_scope
    root = tmp_path_factory.mktemp('selection')
    images = root / 'images' / 'sub'
    images.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for i in range(N):  # smooth random blobs, each its own colours
        small = rng.randint(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((32, 32), Image.BICUBIC).save(
            images / f'{i}.png')
    config = root / 'r18mod_cifar.py'
    config.write_text(CONFIG)
    cfg = load_config(str(config))
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    checkpoint = root / 'model.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    return root, config, checkpoint, cfg, model.eval()


@pytest.mark.e2e
def test_recorded_selections_are_each_blocks_topk(setup):
    root, config, checkpoint, cfg, model = setup
    out = root / 'out'
    summary = selection.main([
        str(config), str(checkpoint), '--images', str(root / 'images'),
        '--out-dir', str(out), '--batch-size', '4', '--show', '5'])
    recorded = torch.load(out / 'selections.pth', weights_only=True)
    assert len(recorded['images']) == N

    # Each block's own top-k on its own input, without hooks: run the
    # backbone by hand, block by block, on the same images in one batch.
    samples, _, _ = load_samples(cfg, str(root / 'images'))
    from mmengine.dataset import pseudo_collate
    x = model.data_preprocessor(pseudo_collate(samples), False)['inputs']
    bb = model.backbone
    with torch.no_grad():
        x = bb.relu(bb.norm1(bb.conv1(x)))  # CIFAR stem: no max-pool
        blocks = 0
        for layer in bb.res_layers:
            for i, block in enumerate(getattr(bb, layer)):
                if isinstance(block, MoDBlock):
                    name = f'backbone.{layer}.{i}'
                    scores, idx = block.select(x)
                    rec = recorded['blocks'][name]
                    assert rec['indices'].shape == (N, block.k)
                    assert torch.equal(rec['indices'], idx), name
                    torch.testing.assert_close(
                        rec['scores'].gather(1, idx), scores)
                    assert rec['scores'].shape == (N, block.channels)
                    blocks += 1
                x = block(x)
    assert blocks == len(recorded['blocks']) == len(summary) == 4

    written = json.loads((out / 'summary.json').read_text())
    assert written['images'] == N and set(written['blocks']) == set(summary)
    for name, s in written['blocks'].items():
        sets = {tuple(sorted(r)) for r in
                recorded['blocks'][name]['indices'].tolist()}
        assert s['distinct_sets'] == len(sets)
        assert sum(s['top_channels'].values()) <= s['k'] + 1e-6
    import matplotlib.image
    for figure in ('frequency.png', 'scores.png', 'features.png'):
        pixels = matplotlib.image.imread(out / figure)
        assert min(pixels.shape[:2]) > 200 and pixels.std() > 0.01, figure


def test_recorder_keeps_a_copy_of_what_the_block_received():
    """What features.png draws is the block's input as the block received
    it, even if something writes into that tensor afterwards (as an
    in-place fusion, or a hook, may)."""
    block = MoDBlock(16, lambda k: torch.nn.Conv2d(k, k, 3, padding=1), c=4)
    model = torch.nn.Sequential(torch.nn.Identity(), block).eval()
    received = {}

    def keep(module, args):  # (returns None: the input stays args[0])
        received['x'] = args[0].clone()

    block.register_forward_pre_hook(keep)
    # something after the block writes into the block's input
    block.register_forward_hook(lambda m, args, out: args[0].mul_(0))
    x = torch.randn(3, 16, 5, 5)
    with SelectionRecorder(model, keep_input_of=1) as rec, torch.no_grad():
        model(x)
    kept = rec.inputs['1']
    assert x.abs().max() == 0  # the input was overwritten ...
    torch.testing.assert_close(kept, received['x'][1])  # ... not the record
    assert kept.abs().max() > 0


def test_summary_measures_input_dependence():
    channels = 8
    scores = torch.rand(4, channels)

    fixed = summarise(Selection(channels, 2, torch.tensor([[3, 1]] * 4),
                                scores))
    assert (fixed['distinct_sets'], fixed['share_differs']) == (1, 0)
    assert fixed['most_common_set'] == [1, 3]
    assert fixed['entropy_bits'] == pytest.approx(1)   # log2(k)
    assert fixed['entropy_norm'] == pytest.approx(0)
    assert fixed['channels_ever_chosen'] == 2

    # every image its own pair, every channel chosen once: uniform
    spread = summarise(Selection(channels, 2, torch.tensor(
        [[0, 1], [2, 3], [5, 4], [7, 6]]), scores))
    assert (spread['distinct_sets'], spread['share_differs']) == (4, 0.75)
    assert spread['entropy_bits'] == pytest.approx(3)  # log2(C)
    assert spread['entropy_norm'] == pytest.approx(1)

    chosen = scores.gather(1, torch.tensor([[3, 1]] * 4))
    assert fixed['mean_score_chosen'] == pytest.approx(float(chosen.mean()))
    assert set(fixed['top_channels']) == {1, 3}  # never-chosen left out
    assert fixed['share_tied'] == 0  # random scores: no ties

    # saturated scores: image 0 leaves out two channels that score exactly
    # as its worst chosen one, image 1 one, images 2 and 3 none
    scores = torch.linspace(0, 0.5, channels).repeat(4, 1)
    scores[:, [1, 3]] = 0.9
    scores[0, [5, 6]] = 0.9
    scores[1, 0] = 0.9
    tied = summarise(Selection(channels, 2, torch.tensor([[3, 1]] * 4),
                               scores))
    assert tied['share_tied'] == 0.5
    assert tied['mean_tied_left_out'] == 0.75


@pytest.mark.e2e
def test_random_init_warns_and_bad_input_is_named(setup, tmp_path):
    root, config, _, _, _ = setup
    with pytest.warns(UserWarning, match='randomly initialised'):
        summary = selection.main([
            str(config), '--images', str(root / 'images'), '--num-images',
            '2', '--out-dir', str(tmp_path)])
    assert all(s['images'] == 2 for s in summary.values())
    with pytest.raises(FileNotFoundError, match='--images: no image folder'):
        selection.main([str(config), '--images', str(tmp_path / 'nope')])
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        selection.main([str(config), str(tmp_path / 'x.pth'), '--images',
                        str(root / 'images')])
