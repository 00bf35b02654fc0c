"""Convert a MoD model's checkpoint into its inference form.

    python tools/deployment/switch_to_deploy.py CONFIG CHECKPOINT DST

Builds CONFIG's model, loads CHECKPOINT (it must fit), turns every MoD block
into its inference form (:func:`mmmod.layers.switch_to_deploy`: BN folded,
the Conv-Block as one fused op where that pays, the fusion added in place)
and writes DST: the weights and the checkpoint's ``meta`` (class names
included), nothing else of the training state. Build the
model for it from the same config with ``model.backbone.deploy=True``
(``--cfg-options`` of the tools); it runs inference only.
"""
import os
import os.path as osp

from mmmod.apis import (add_cfg_options, add_trust_flag, parse_tool_args,
                        tool_parser)


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument('config', help='config file path')
    p.add_argument('checkpoint', help='trained weights of the config\'s model')
    p.add_argument('dst', help='where to write the converted checkpoint')
    add_cfg_options(p, help='overrides of the config')
    add_trust_flag(p)
    return parse_tool_args(p, argv)


def _same_file(dst, checkpoint):
    """Whether writing ``dst`` would write ``checkpoint``: the same path,
    a symlink to it or a hard link of it."""
    dst, checkpoint = osp.expanduser(dst), osp.expanduser(checkpoint)
    if osp.exists(dst) and osp.exists(checkpoint):
        return osp.samefile(dst, checkpoint)
    return osp.realpath(dst) == osp.realpath(checkpoint)


def convert(config, checkpoint, dst, cfg_options=()):
    """Write the inference form of ``config``'s model with ``checkpoint``'s
    weights to ``dst``; returns the number of MoD blocks converted."""
    import torch

    from mmmod.apis import build_model, load_checkpoint_into
    from mmmod.layers import mod_blocks, switch_to_deploy

    if _same_file(dst, checkpoint):
        raise ValueError(f'{dst}: write the converted checkpoint to a new '
                         'file, the trained one stays as it is')
    model, _ = build_model(config, cfg_options=cfg_options)
    ckpt = load_checkpoint_into(model, checkpoint)
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict):  # none (a bare state dict), or None
        meta = {}
    blocks = mod_blocks(model)
    if not blocks:
        raise ValueError(f'{config}: the model has no MoD blocks to convert')
    if any(b.deploy for b in blocks):
        raise ValueError(f'{config}: the model is built in its inference '
                         'form already (deploy=True); convert the checkpoint '
                         'of the training form')
    model.eval()
    switch_to_deploy(model)
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    # the checkpoint's meta (dataset_meta: the class names) goes along
    torch.save(
        dict(state_dict=model.state_dict(),
             meta=dict(meta, deploy=True, deploy_config=config)), dst)
    return len(blocks)


def main(argv=None):
    args = parse_args(argv)
    n = convert(args.config, args.checkpoint, args.dst, args.cfg_options)
    print(f'{n} MoD blocks in their inference form: {args.dst}\n'
          f'build its model with --cfg-options model.backbone.deploy=True')


if __name__ == '__main__':
    main()
