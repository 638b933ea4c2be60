//! Datasets as tch tensors in [0,1] pixel space: IDX (Fashion-MNIST, MNIST), CIFAR-10/100 binary, and npz.
