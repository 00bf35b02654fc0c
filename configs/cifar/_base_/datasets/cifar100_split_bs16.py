# The stock CIFAR-100 settings with the paper's protocol (supplement S4): train
# on 90 % of the training set, validate on the held-out 10 % (the checkpoint
# kept is the best on it), test on the test set. The split has its own seed:
# it is the same for every model and every training seed (randomness.seed).
_base_ = 'mmpretrain::_base_/datasets/cifar100_bs16.py'

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='TrainValSplit',
        dataset=_base_.train_dataloader.dataset,
        subset='train',
        val_ratio=0.1,
        seed=0))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='TrainValSplit',
        dataset=dict(
            _base_.train_dataloader.dataset, pipeline=_base_.test_pipeline),
        subset='val',
        val_ratio=0.1,
        seed=0))
# test_dataloader stays the stock one: the CIFAR-100 test set.
