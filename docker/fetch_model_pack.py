"""Download an insightface model pack, verify its SHA-256 checksum and unpack it.

Dockerfile.gpu runs this at build time, so no container downloads a model when
it starts. The build fails when the checksum is missing or does not match.

    python fetch_model_pack.py PACK MODEL_ROOT [--sha256 HEX] [--url URL]
        [--checksums FILE]

PACK is antelopev2, buffalo_l, buffalo_s or none (create an empty MODEL_ROOT for
a mounted volume). The pack's .onnx files land in MODEL_ROOT/PACK/.
Standard library only, so it runs in a bare Python image.
"""

import argparse
import hashlib
import re
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

RELEASE_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7"

# The detector and recognizer files that each pack must contain. The archives
# hold more models (landmarks, gender and age), which the worker does not load.
REQUIRED_FILES = {
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "buffalo_s": ("det_500m.onnx", "w600k_mbf.onnx"),
}
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
DOWNLOAD_TIMEOUT_S = 120
CHUNK_BYTES = 1 << 20


class ModelPackError(Exception):
    """A model pack that cannot be provisioned; its message names the fix."""


def read_expected_sha256(checksums_file: Path, archive_name: str) -> str:
    """Return the checksum listed for `archive_name` in a sha256sum-format file."""
    for line in checksums_file.read_text().splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) != 2:
            continue
        value, name = fields
        if name.lstrip("*") == archive_name:
            return value.lower()
    raise ModelPackError(f"{checksums_file} has no line for {archive_name}")


def check_sha256_format(value: str, archive_name: str) -> None:
    """Raise unless `value` is a 64-digit hex SHA-256, which a placeholder is not."""
    if not SHA256_PATTERN.fullmatch(value):
        raise ModelPackError(
            f"the SHA-256 checksum for {archive_name} is not set (got {value!r}); "
            "compute it with sha256sum on a trusted copy of the archive and put it in "
            "docker/model-packs.sha256, or pass --build-arg MODEL_PACK_SHA256=<checksum>"
        )


def download(url: str, destination: Path) -> str:
    """Download `url` to `destination` and return the SHA-256 of the bytes written."""
    digest = hashlib.sha256()
    with (
        urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        destination.open("wb") as output,
    ):
        while chunk := response.read(CHUNK_BYTES):
            digest.update(chunk)
            output.write(chunk)
    return digest.hexdigest()


def unpack_onnx_files(archive: Path, pack_dir: Path, required: tuple[str, ...]) -> list[Path]:
    """Extract the archive's .onnx files flat into `pack_dir` and check `required`.

    Some packs keep their files in a top-level folder and others at the root of the
    archive, so only the file names are kept. Member paths are never joined onto
    `pack_dir`, so a crafted archive cannot write outside it.
    """
    pack_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(archive) as bundle:
        for member in bundle.infolist():
            name = Path(member.filename).name
            if member.is_dir() or not name.endswith(".onnx"):
                continue
            target = pack_dir / name
            with bundle.open(member) as source, target.open("wb") as output:
                shutil.copyfileobj(source, output)
            written.append(target)

    missing = [name for name in required if not (pack_dir / name).is_file()]
    if missing:
        raise ModelPackError(f"{archive.name} does not contain {', '.join(missing)}")
    return written


def provision(
    pack: str,
    model_root: Path,
    checksums_file: Path,
    sha256_override: str = "",
    url: str = "",
) -> None:
    """Download, verify and unpack `pack` under `model_root`; `none` only creates the root."""
    model_root.mkdir(parents=True, exist_ok=True)
    if pack == "none":
        print(f"MODEL_PACK=none: {model_root} stays empty for a mounted volume")
        return
    if pack not in REQUIRED_FILES:
        raise ModelPackError(
            f"unknown MODEL_PACK {pack!r}; expected one of {', '.join(REQUIRED_FILES)} or none"
        )

    archive_name = f"{pack}.zip"
    expected = sha256_override.strip().lower() or read_expected_sha256(checksums_file, archive_name)
    check_sha256_format(expected, archive_name)

    source_url = url or f"{RELEASE_URL}/{archive_name}"
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / archive_name
        print(f"downloading {source_url}")
        actual = download(source_url, archive)
        if actual != expected:
            raise ModelPackError(
                f"SHA-256 mismatch for {archive_name} from {source_url}: "
                f"expected {expected}, got {actual}"
            )
        written = unpack_onnx_files(archive, model_root / pack, REQUIRED_FILES[pack])
    print(f"verified {archive_name} ({actual}); unpacked {len(written)} .onnx files")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and provision one pack; exit status 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pack", help="antelopev2, buffalo_l, buffalo_s or none")
    parser.add_argument("model_root", type=Path, help="folder that receives PACK/*.onnx")
    parser.add_argument(
        "--checksums",
        type=Path,
        default=Path(__file__).with_name("model-packs.sha256"),
        help="sha256sum-format file with one line per archive",
    )
    parser.add_argument("--sha256", default="", help="expected checksum; overrides --checksums")
    parser.add_argument("--url", default="", help=f"archive URL (default {RELEASE_URL}/PACK.zip)")
    args = parser.parse_args(argv)

    try:
        provision(args.pack, args.model_root, args.checksums, args.sha256, args.url)
    except (ModelPackError, OSError, zipfile.BadZipFile) as error:
        print(f"fetch_model_pack: FAILED: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
