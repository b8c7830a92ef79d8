"""CIFAR-10 (binary version) reading, downloading and input pipeline for the example.

Why our own reader instead of ``mindspore.dataset.Cifar10Dataset``: MindSpore 2.10's reader
rejects any ``.bin`` file that does not hold exactly 10,000 records ("Invalid cifar10 file")
and sizes the dataset assuming 10,000 records per file. Real subsets, truncated downloads
and small test fixtures all break that. The format is trivial (records of 1 label byte +
3,072 pixel bytes, channel-major R, G, B planes of 32x32), so we read it with NumPy, check it,
and feed MindSpore through ``GeneratorDataset``.

Nothing here imports MindSpore at module level: the training script must be able to read and
check data (and fail fast with a clear message) before MindSpore is imported, which in turn
must happen after ``ONEDNN_MAX_CPU_ISA`` is set.
"""

import glob
import hashlib
import os
import sys
import tarfile
import tempfile
import urllib.request

import numpy as np

RECORD_BYTES = 1 + 32 * 32 * 3
NUM_CLASSES = 10
DEFAULT_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
DEFAULT_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE_DIR = "cifar-10-batches-bin"
TRAIN_GLOB = "data_batch_*.bin"
TEST_FILE = "test_batch.bin"

# Per-channel statistics of the 50,000 CIFAR-10 training images, pixel values scaled to [0, 1].
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


class DataError(Exception):
    """A data problem the user can fix; the script prints it without a traceback."""


# --------------------------------------------------------------------------- reading


def read_cifar10_bin(path, num_classes=NUM_CLASSES):
    """Read one CIFAR-10 binary file of any number of records.

    Returns ``(images, labels)``: uint8 ``(N, 32, 32, 3)`` HWC and int32 ``(N,)``.
    """
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if size == 0:
        raise DataError(
            f"{path} is empty (0 bytes): the file is truncated; delete it and download the data again (--download)"
        )
    if size % RECORD_BYTES:
        raise DataError(
            f"{path} is malformed: its size, {size:,} bytes, is not a multiple of the "
            f"{RECORD_BYTES}-byte CIFAR-10 record (1 label byte + 3,072 pixel bytes); "
            f"{size // RECORD_BYTES:,} whole records and {size % RECORD_BYTES} stray bytes. "
            f"The file is truncated or is not the *binary* CIFAR-10 format (the Python "
            f"'pickle' version, cifar-10-python.tar.gz, is a different format)."
        )
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = raw[:, 0].astype(np.int32)
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise DataError(
            f"{path} is malformed: record {bad[0]} has label {labels[bad[0]]}, outside "
            f"0..{num_classes - 1} ({bad.size:,} of {labels.size:,} records are out of range). "
            f"This is not a CIFAR-10 binary file (CIFAR-100 binaries have 2 label bytes)."
        )
    images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW planes -> HWC
    return np.ascontiguousarray(images), labels


def _has_split_files(d):
    return os.path.isfile(os.path.join(d, TEST_FILE)) or bool(glob.glob(os.path.join(d, TRAIN_GLOB)))


def resolve_data_dir(data_dir):
    """The folder holding the .bin files: ``data_dir`` itself or ``data_dir/cifar-10-batches-bin``."""
    for d in (data_dir, os.path.join(data_dir, ARCHIVE_DIR)):
        if os.path.isdir(d) and _has_split_files(d):
            return d
    return None


def missing_data_message(data_dir):
    return (
        f"no CIFAR-10 binary data found in {os.path.abspath(data_dir)!s} "
        f"(looked for {TRAIN_GLOB} and {TEST_FILE} there and in {ARCHIVE_DIR}/). "
        f"Run again with --download to fetch the official archive ({DEFAULT_URL}, 163 MB, "
        f"MD5-checked) into --data-dir, or point --data-dir at a folder that holds the "
        f"extracted {ARCHIVE_DIR} files, or use --synthetic for a smoke test without data."
    )


def load_split(data_dir, usage, limit=None):
    """Load the ``usage`` ('train' or 'test') split. Returns (images, labels, files)."""
    d = resolve_data_dir(data_dir)
    if d is None:
        raise DataError(missing_data_message(data_dir))
    if usage == "train":
        files = sorted(glob.glob(os.path.join(d, TRAIN_GLOB)))
        if not files:
            raise DataError(f"{d} has no training files ({TRAIN_GLOB}). " + missing_data_message(data_dir))
    elif usage == "test":
        files = [os.path.join(d, TEST_FILE)]
        if not os.path.isfile(files[0]):
            raise DataError(f"{d} has no {TEST_FILE}. " + missing_data_message(data_dir))
    else:
        raise ValueError(f"usage must be 'train' or 'test', not {usage!r}")
    imgs, labs = [], []
    have = 0
    for f in files:
        x, y = read_cifar10_bin(f)
        imgs.append(x)
        labs.append(y)
        have += len(y)
        if limit is not None and have >= limit:
            break
    images, labels = np.concatenate(imgs), np.concatenate(labs)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels, files


def synthetic_cifar10(n, seed, num_classes=NUM_CLASSES):
    """Learnable fake data: each class has its own colour and stripe orientation, plus noise."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % num_classes).astype(np.int32)
    rng.shuffle(labels)
    base = np.random.default_rng(12345).integers(40, 216, size=(num_classes, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:32, 0:32]
    images = np.empty((n, 32, 32, 3), np.uint8)
    for i, c in enumerate(labels):
        stripes = np.sin((xx * np.cos(c) + yy * np.sin(c)) * 0.8)[..., None] * 40.0
        img = base[c] + stripes + rng.normal(0, 25, size=(32, 32, 3))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels


# --------------------------------------------------------------------------- download


def _md5(path, chunk=1 << 20):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _safe_extract(archive, dest):
    """Extract regular files and folders only, refusing absolute paths, '..' and links."""
    dest_real = os.path.realpath(dest)
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            target = os.path.realpath(os.path.join(dest, m.name))
            if (
                os.path.isabs(m.name)
                or ".." in m.name.replace("\\", "/").split("/")
                or not (target == dest_real or target.startswith(dest_real + os.sep))
            ):
                raise DataError(f"refusing to extract {archive}: member {m.name!r} points outside {dest}")
            if not (m.isreg() or m.isdir()):
                raise DataError(
                    f"refusing to extract {archive}: member {m.name!r} is not a regular "
                    f"file or folder (links and devices are not expected in CIFAR-10)"
                )
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **kwargs)


def download_cifar10(data_dir, url=DEFAULT_URL, md5=DEFAULT_MD5, log=print, timeout=60):
    """Download, verify and extract the binary archive into ``data_dir``; return the .bin folder.

    If the data is already there the download is skipped. The archive is written to a
    temporary name and only extracted after its MD5 matches.
    """
    existing = resolve_data_dir(data_dir)
    if existing is not None:
        log(f"[data] --download: CIFAR-10 already present in {existing}, not downloading")
        return existing
    os.makedirs(data_dir, exist_ok=True)
    archive = os.path.join(data_dir, os.path.basename(url.split("?")[0]) or "cifar-10-binary.tar.gz")
    if os.path.isfile(archive) and md5 and _md5(archive) == md5.lower():
        log(f"[data] using the already downloaded {archive} (MD5 ok)")
    else:
        log(f"[data] downloading {url} -> {archive}")
        fd, part = tempfile.mkstemp(prefix=".download-", dir=data_dir)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0)
                got, next_report = 0, 0.0
                while True:
                    block = resp.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    got += len(block)
                    if total and got / total >= next_report:
                        log(f"[data]   {got / 1e6:7.1f} / {total / 1e6:.1f} MB")
                        next_report += 0.25
            if total and got != total:
                raise DataError(f"download of {url} truncated: {got} of {total} bytes")
            digest = _md5(part)
            if md5 and digest != md5.lower():
                raise DataError(
                    f"MD5 mismatch for {url}: got {digest}, expected {md5.lower()}; "
                    f"the download is corrupt or not the official archive "
                    f"(nothing was extracted)"
                )
            log(f"[data] MD5 {digest} ok" if md5 else f"[data] MD5 {digest} (not checked: empty --download-md5)")
            os.replace(part, archive)
        except OSError as e:  # URLError, HTTPError, socket timeouts, disk errors
            raise DataError(f"download of {url} failed: {e}") from None
        finally:
            if os.path.exists(part):
                os.remove(part)
    _safe_extract(archive, data_dir)
    d = resolve_data_dir(data_dir)
    if d is None:
        raise DataError(
            f"{archive} was extracted into {data_dir} but holds no CIFAR-10 binary files ({TRAIN_GLOB}, {TEST_FILE})"
        )
    log(f"[data] extracted to {d}")
    return d


# --------------------------------------------------------------------------- pipeline


def epoch_order(n, seed, epoch):
    """The shuffle of epoch ``epoch``: a pure function of (seed, epoch), so resume can rebuild it."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def normalize_chw(img_hwc_uint8):
    x = img_hwc_uint8.astype(np.float32) * (1.0 / 255.0)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # HWC -> CHW


class _Source:
    """Random-access source for GeneratorDataset.

    Item ``i`` is sample ``order[start + i]``. Training augmentation (4-pixel zero padding +
    random 32x32 crop, horizontal flip with p=0.5) draws from an RNG seeded by
    (seed, epoch, position in the epoch), so the augmented stream is identical whatever the
    number of workers and whether or not the epoch was resumed half-way.
    """

    def __init__(self, images, labels, order, start, count, augment, seed=0, epoch=0):
        self.images, self.labels, self.order = images, labels, order
        self.start, self.count, self.augment = start, count, augment
        self.seed, self.epoch = seed, epoch

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        pos = self.start + i
        idx = self.order[pos]
        img = self.images[idx]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, pos])
            dy, dx, flip = rng.integers(0, 9), rng.integers(0, 9), rng.random() < 0.5
            padded = np.zeros((40, 40, 3), np.uint8)
            padded[4:36, 4:36] = img
            img = padded[dy : dy + 32, dx : dx + 32]
            if flip:
                img = img[:, ::-1]
        return normalize_chw(img), np.array(self.labels[idx], np.int32)


def make_dataset(
    images,
    labels,
    batch_size,
    *,
    order=None,
    start=0,
    count=None,
    augment=False,
    seed=0,
    epoch=0,
    drop_remainder=False,
    num_workers=1,
):
    """A MindSpore dataset of (float32 NCHW images, int32 labels) batches."""
    import mindspore.dataset as ds

    n = len(labels)
    order = np.arange(n) if order is None else order
    count = n - start if count is None else count
    src = _Source(images, labels, order, start, count, augment, seed, epoch)
    dataset = ds.GeneratorDataset(
        src,
        column_names=["image", "label"],
        shuffle=False,
        num_parallel_workers=max(1, num_workers),
        python_multiprocessing=False,
    )
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def default_num_workers():
    """Data workers: the pipeline is light (32x32 crops), the network is heavy; leave the cores to it."""
    return max(1, min(8, (os.cpu_count() or 2) // 4))


if __name__ == "__main__":  # tiny CLI: python -m examples.resnet50_cifar10.data FILE... -> record counts
    for f in sys.argv[1:]:
        try:
            x, y = read_cifar10_bin(f)
            print(f, len(y), np.bincount(y, minlength=NUM_CLASSES).tolist())
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
