"""ResNet50 on CIFAR-10 with gradient accumulation: `python -m examples.resnet50_cifar10.train`."""
