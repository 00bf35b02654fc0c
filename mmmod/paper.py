"""The paper's numbers, in one place (supplement Tables 5-11; SPEC sections
4 and 6). The tools print them beside our measurements and the tests
compare the rebuilt models with them; nothing else states them."""

# Parameters (M) as printed, ImageNet models (1000-class head; Table 7).
PARAMS = {
    'resnet18-mod': 5.46, 'resnet26-mod': 11.40, 'resnet34-mod': 12.93,
    'resnet42-mod': 17.72, 'resnet50-mod': 18.11, 'resnet75-mod': 23.10,
    'resnet86-mod': 25.60,
}

# GMACs at 224x224 (Tables 7 and 9).
GMACS = {
    'resnet18': 1.82, 'resnet34': 3.68, 'resnet50': 4.1,
    'resnet18-mod': 0.89, 'resnet26-mod': 1.36, 'resnet34-mod': 2.06,
    'resnet42-mod': 2.29, 'resnet50-mod': 2.60, 'resnet75-mod': 3.48,
    'resnet86-mod': 3.92,
}

# Table 11 (CIFAR stem; VGG with a 512-512-512-classes classifier):
# {model: (params (M) with 10 classes, with 100 classes, MMACs at 32x32)}.
# ResNet34's MMACs are its C100 row's: the C10 row's 1016 is a slip.
CIFAR = {
    'resnet18': (11.17, 11.22, 557),
    'resnet18-mod': (4.95, 4.99, 255),
    'resnet34': (21.28, 21.33, 1160),
    'resnet34-mod': (12.42, 12.47, 633),
    'resnet50': (23.52, 23.71, 1310),
    'resnet50-mod': (16.07, 16.26, 808),
    'vgg16bn': (15.25, 15.30, 315),
    'vgg16bn-mod': (9.83, 9.88, 155),
    'vgg19bn': (20.57, 20.61, 400),
    'vgg19bn-mod': (9.91, 9.96, 155),
}

# Inference speed-up of a MoD model over its baseline: {model: (baseline,
# CPU, GPU)}. The column order is fixed by Table 7's milliseconds (R34
# 98.83 / R34-MoD 60.79 ms on CPU = 1.63; 1.27 / 0.83 ms on GPU = 1.53).
# ResNet75-MoD and ResNet86-MoD against ResNet50 are the headline pairs
# (equal or better accuracy, less time; Tables 8-9): 128.90 / 2.19 ms and
# 150.96 / 2.40 ms against ResNet50's ~161 / ~2.52 ms.
SPEEDUPS = {
    'resnet18-mod': ('resnet18', 1.60, 1.58),
    'resnet34-mod': ('resnet34', 1.63, 1.53),
    'resnet50-mod': ('resnet50', 1.48, 1.44),
    'resnet42-mod': ('resnet34', 1.54, 1.45),
    'resnet26-mod': ('resnet18', 1.28, 1.28),
    'resnet75-mod': ('resnet50', 1.25, 1.15),
    'resnet86-mod': ('resnet50', 1.06, 1.05),
}
