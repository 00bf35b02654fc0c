"""The paper's numbers, in one place (supplement Tables 5-11; SPEC sections
4 and 6). The tools print them beside our measurements and the tests
compare the rebuilt models with them; nothing else states them."""

# Parameters (M) as printed: {(model, classes): params}. ImageNet models
# have the 1000-class head; CIFAR ones (Table 11) 10 classes and the CIFAR
# stem (VGG: a classifier 512-512-512-classes).
PARAMS = {
    ('resnet18-mod', 1000): 5.46,
    ('resnet26-mod', 1000): 11.40,
    ('resnet34-mod', 1000): 12.93,
    ('resnet42-mod', 1000): 17.72,
    ('resnet50-mod', 1000): 18.11,
    ('resnet75-mod', 1000): 23.10,
    ('resnet86-mod', 1000): 25.60,
    ('resnet18-mod', 10): 4.95,
    ('resnet34-mod', 10): 12.42,
    ('resnet50-mod', 10): 16.07,
    ('vgg16bn-mod', 10): 9.83,
    ('vgg19bn-mod', 10): 9.91,
}

# GMACs at 224x224 (Tables 7 and 9).
GMACS = {
    'resnet18': 1.82, 'resnet34': 3.68, 'resnet50': 4.1,
    'resnet18-mod': 0.89, 'resnet26-mod': 1.36, 'resnet34-mod': 2.06,
    'resnet42-mod': 2.29, 'resnet50-mod': 2.60, 'resnet75-mod': 3.48,
    'resnet86-mod': 3.92,
}

# CIFAR MMACs at 32x32 (Table 11).
CIFAR_MMACS = {
    'resnet18-mod': 255, 'resnet34-mod': 633, 'resnet50-mod': 808,
    'vgg16bn-mod': 155, 'vgg19bn-mod': 155,
}

# Inference speed-up of a MoD model over its baseline: {model: (baseline,
# CPU, GPU)}. The column order is fixed by Table 7's milliseconds (R34
# 98.83 / R34-MoD 60.79 ms on CPU = 1.63; 1.27 / 0.83 ms on GPU = 1.53).
SPEEDUPS = {
    'resnet18-mod': ('resnet18', 1.60, 1.58),
    'resnet34-mod': ('resnet34', 1.63, 1.53),
    'resnet50-mod': ('resnet50', 1.48, 1.44),
    'resnet42-mod': ('resnet34', 1.54, 1.45),
    'resnet26-mod': ('resnet18', 1.28, 1.28),
}
