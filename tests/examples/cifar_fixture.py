"""Small generated CIFAR-10 binary fixtures for the example's tests (never the real data)."""

import hashlib
import os
import tarfile

import numpy as np

RECORD = 3073


def cifar_records(n, seed):
    """``n`` records in the CIFAR-10 binary layout: label byte + R, G, B 32x32 planes."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    # a per-class tint so the data is not pure noise
    pixels[:, :1024] = np.clip(pixels[:, :1024].astype(int) // 2 + labels[:, None] * 12, 0, 255)
    return np.concatenate([labels[:, None], pixels], axis=1).tobytes()


def write_cifar_dir(root, train_counts=(6, 6), n_test=10, seed=0):
    """root/cifar-10-batches-bin/ with data_batch_1..k.bin (record counts ``train_counts``),
    test_batch.bin and batches.meta.txt. Returns that folder."""
    d = os.path.join(str(root), "cifar-10-batches-bin")
    os.makedirs(d, exist_ok=True)
    for i, n in enumerate(train_counts, 1):
        with open(os.path.join(d, f"data_batch_{i}.bin"), "wb") as f:
            f.write(cifar_records(n, seed + i))
    with open(os.path.join(d, "test_batch.bin"), "wb") as f:
        f.write(cifar_records(n_test, seed + 100))
    with open(os.path.join(d, "batches.meta.txt"), "w") as f:
        f.write(
            "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]) + "\n"
        )
    return d


def make_archive(src_root, out_path):
    """tar.gz of src_root/cifar-10-batches-bin laid out like the official archive; returns its MD5."""
    with tarfile.open(out_path, "w:gz") as tar:
        tar.add(os.path.join(str(src_root), "cifar-10-batches-bin"), arcname="cifar-10-batches-bin")
    with open(out_path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()
