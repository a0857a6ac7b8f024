"""Command line: `python -m eventsnap_client embed-folder PHOTOS_DIR OUT.jsonl`."""

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from eventsnap_client.client import DEFAULT_URL, EventsnapClient
from eventsnap_client.errors import EventsnapError, InvalidInputError, PayloadTooLargeError
from eventsnap_client.images import IMAGE_SUFFIXES

logger = logging.getLogger("eventsnap_client.cli")


@dataclass
class Photo:
    path: Path
    # The `path` field of the output line: relative to the photo folder, in POSIX form.
    name: str


@dataclass
class RunCounts:
    embedded: int = 0
    rejected: int = 0
    faces: int = 0


def find_photos(folder: Path) -> list[Photo]:
    """Return the image files under `folder`, recursively, sorted by relative path."""
    photos = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories.sort()
        for file_name in sorted(files):
            path = Path(directory) / file_name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                photos.append(Photo(path, path.relative_to(folder).as_posix()))
    return sorted(photos, key=lambda photo: photo.name)


def read_done_paths(out_path: Path) -> set[str]:
    """Return the `path` of every complete line of `out_path`, cutting off a partial last line.

    A run that was killed while writing leaves a last line without its newline
    or with invalid JSON. That line is removed, so its photo is sent again.
    An invalid line before the last one raises ValueError, because the file was
    then changed by something other than this command.
    """
    if not out_path.exists():
        return set()
    data = out_path.read_bytes()
    lines = data.split(b"\n")
    # A file ending in a newline splits into the lines plus one empty string.
    complete, last = lines[:-1], lines[-1]
    done = set()
    keep_bytes = 0
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            keep_bytes += len(line) + 1
            continue
        try:
            record = json.loads(line)
            done.add(record["path"])
        except (ValueError, KeyError, TypeError) as error:
            if number == len(complete) and not last:
                logger.warning("Line %d of %s is incomplete; its photo is redone", number, out_path)
                break
            raise ValueError(
                f"Line {number} of {out_path} is not a JSON object with a 'path' ({error}); "
                "fix or delete that line, or write to a new file."
            ) from None
        keep_bytes += len(line) + 1
    if keep_bytes != len(data):
        if last:
            logger.warning("The last line of %s is incomplete; its photo is redone", out_path)
        with out_path.open("r+b") as handle:
            handle.truncate(keep_bytes)
    return done


def batches(photos: Sequence[Photo], size: int) -> Iterator[list[Photo]]:
    for start in range(0, len(photos), size):
        yield list(photos[start : start + size])


def error_record(photo: Photo, code: str, message: str) -> dict[str, Any]:
    return {"path": photo.name, "error": {"code": code, "message": message}}


def rejected_records(photos: list[Photo], error: InvalidInputError) -> dict[int, dict[str, Any]]:
    """Map each index that a 422 names to an error line for that photo."""
    records: dict[int, dict[str, Any]] = {}
    for entry in error.errors:
        loc = entry.get("loc", [])
        if len(loc) >= 3 and loc[:2] == ["body", "inputs"] and isinstance(loc[2], int):
            index = loc[2]
            if 0 <= index < len(photos) and index not in records:
                code = str(entry.get("type", "invalid"))
                records[index] = error_record(photos[index], code, str(entry.get("msg", "")))
    return records


def embed_batch(
    client: EventsnapClient, photos: list[Photo], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Embed `photos` and return their output lines in order.

    When the service rejects some images with 422, those get error lines and
    the rest are sent again. A batch over the body size limit (413) is split
    in halves. Any other error stops the run, because later batches would
    meet it too.
    """
    images: list[bytes] = []
    records: dict[int, dict[str, Any]] = {}
    for index, photo in enumerate(photos):
        try:
            images.append(photo.path.read_bytes())
        except OSError as error:
            records[index] = error_record(photo, "read_failed", str(error))
            images.append(b"")

    pending = [index for index in range(len(photos)) if index not in records]
    while pending:
        try:
            results = client.detect([images[index] for index in pending], **params)
        except InvalidInputError as error:
            rejected = rejected_records([photos[index] for index in pending], error)
            if not rejected:
                raise
            for position, record in rejected.items():
                records[pending[position]] = record
            pending = [index for position, index in enumerate(pending) if position not in rejected]
            continue
        except PayloadTooLargeError as error:
            if len(pending) == 1:
                records[pending[0]] = error_record(photos[pending[0]], "too_large", str(error))
                break
            half = len(pending) // 2
            first = embed_batch(client, [photos[index] for index in pending[:half]], params)
            second = embed_batch(client, [photos[index] for index in pending[half:]], params)
            for index, record in zip(pending, first + second, strict=True):
                records[index] = record
            break
        for index, faces in zip(pending, results, strict=True):
            records[index] = {"path": photos[index].name, "faces": faces}
        break
    return [records[index] for index in range(len(photos))]


def write_records(out: IO[str], records: list[dict[str, Any]], counts: RunCounts) -> None:
    for record in records:
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
        if "error" in record:
            counts.rejected += 1
        else:
            counts.embedded += 1
            counts.faces += len(record["faces"])
    out.flush()


def embed_folder(args: argparse.Namespace) -> int:
    folder: Path = args.photos_dir
    out_path: Path = args.out
    if not folder.is_dir():
        print(f"error: {folder} is not a folder", file=sys.stderr)
        return 2

    photos = find_photos(folder)
    try:
        done = read_done_paths(out_path)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    todo = [photo for photo in photos if photo.name not in done]
    print(
        f"{len(photos)} photos in {folder}: {len(photos) - len(todo)} already in {out_path}, "
        f"{len(todo)} to send",
        file=sys.stderr,
    )

    params = {"max_faces": args.max_faces, "det_conf": args.det_conf, "nms_thresh": args.nms_thresh}
    counts = RunCounts()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        EventsnapClient(args.url, api_key=args.api_key, timeout=args.timeout) as client,
        out_path.open("a", encoding="utf-8") as out,
        tqdm(total=len(todo), unit="photo", disable=args.quiet or None) as progress,
    ):
        for batch in batches(todo, args.batch):
            try:
                records = embed_batch(client, batch, params)
            except EventsnapError as error:
                progress.close()
                print(
                    f"error: stopped after {counts.embedded + counts.rejected} photos: {error}\n"
                    "Run the same command again to resume.",
                    file=sys.stderr,
                )
                return 1
            write_records(out, records, counts)
            progress.update(len(batch))

    print(
        f"sent {counts.embedded + counts.rejected} photos: {counts.embedded} embedded "
        f"({counts.faces} faces), {counts.rejected} rejected",
        file=sys.stderr,
    )
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventsnap", description="Client of the Eventsnap Inference face service."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser(
        "embed-folder",
        help="embed every photo of a folder into a JSON Lines file",
        description="Send every photo under PHOTOS_DIR (jpg, jpeg, png, webp, bmp, tif, tiff, "
        "gif; recursively) to the service and append one JSON line per photo to OUT: "
        '{"path", "faces"} or {"path", "error"}. Photos already in OUT are skipped, so '
        "rerunning the command resumes an interrupted run.",
    )
    embed.add_argument(
        "photos_dir", type=Path, metavar="PHOTOS_DIR", help="folder of photos, read recursively"
    )
    embed.add_argument(
        "out", type=Path, metavar="OUT", help="JSON Lines file to append to; created if missing"
    )
    embed.add_argument(
        "--url",
        default=os.environ.get("EVENTSNAP_URL", DEFAULT_URL),
        help="base URL of the service (default: $EVENTSNAP_URL or %(default)s)",
    )
    embed.add_argument(
        "--api-key",
        default=os.environ.get("EVENTSNAP_API_KEY"),
        help="sent as 'Authorization: Bearer KEY' (default: $EVENTSNAP_API_KEY)",
    )
    embed.add_argument(
        "--batch", type=positive_int, default=8, help="photos per request (default: %(default)s)"
    )
    embed.add_argument(
        "--max-faces",
        type=int,
        default=0,
        help="faces kept per photo, largest first; 0 keeps all (default: %(default)s)",
    )
    embed.add_argument(
        "--det-conf", type=float, default=0.5, help="detector score threshold (default: 0.5)"
    )
    embed.add_argument(
        "--nms-thresh", type=float, default=0.4, help="NMS IoU threshold (default: 0.4)"
    )
    embed.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for each response (default: %(default)s)",
    )
    embed.add_argument("--quiet", action="store_true", help="hide the progress bar")
    embed.set_defaults(handler=embed_folder)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    status: int = args.handler(args)
    return status
