"""Uploads are deleted as soon as they are read, also when several clients send the same file at once."""

import asyncio
import filecmp
import os
import threading
from collections import Counter
from pathlib import Path

import demo_settings as settings


def path_of(file) -> str:
    """A `gr.File` value (a path string, or an object with `.name` in older Gradio) or a path -> the path."""
    return os.fspath(file) if isinstance(file, (str, os.PathLike)) else file.name


def upload_folder() -> Path:
    return Path(os.environ["GRADIO_TEMP_DIR"]).resolve()


def _is_example_copy(path: Path) -> bool:
    """Gradio caches each example once at start-up; deleting that copy would break the example."""
    example = settings.EXAMPLES_DIR / path.name
    return example.is_file() and path.is_file() and filecmp.cmp(path, example, shallow=False)


class UploadCounts(set):
    """Gradio's set of uploaded paths (`Blocks.upload_file_set`) that also counts the uploads per path.

    Gradio stores an upload at `<temp dir>/<sha256 of the bytes>/<file name>`, so clients sending the
    same file share one path. A request that has read an upload releases it, and the path is deleted
    when the last request that uploaded those bytes has read them: no request finds it gone, and none
    is kept longer than its readers need. Uploads no request ever reads (a page closed after
    uploading) are removed by Gradio's cache sweep (`delete_cache`), which subtracts them from this set.

    Gradio's upload route renames the new file onto the shared path and then calls `update`, both on
    the server's event loop with no `await` between them. A request releases from a worker thread, so
    a delete done there could land between that rename and that `update` and remove a file another
    upload has just put back. The delete is therefore run on the event loop too, where it falls either
    before the rename (the upload writes the file anew) or after the `update` (the count keeps it).
    """

    def __init__(self, paths=()):
        super().__init__(paths)
        self.lock = threading.Lock()
        self.pending = Counter()  # resolved path -> uploads of it that no request has read yet
        self.loop = None  # the event loop Gradio's upload route runs on, once an upload has arrived

    def update(self, *groups):
        """Called by Gradio's upload route with the paths it has just written."""
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the server (start-up, tests)
            pass
        with self.lock:
            for group in groups:
                group = list(group)
                self.pending.update(str(Path(path).resolve()) for path in group)
                super().update(group)

    def __isub__(self, swept):
        with self.lock:
            for path in swept:
                self.pending.pop(str(Path(path).resolve()), None)
            return super().__isub__(swept)

    def release(self, path: Path) -> None:
        """One request has read the upload at `path` (resolved): delete it unless another upload awaits it.

        A path this set never saw (a file handed to `predict` directly) has one reader and is deleted.
        """
        with self.lock:
            key = str(path)
            if self.pending[key] > 1:
                self.pending[key] -= 1
                return
            self.pending.pop(key, None)
        try:
            self.loop.call_soon_threadsafe(self._delete_unless_uploaded_again, path)
        except (AttributeError, RuntimeError):  # no server, or its loop has closed
            self._delete_unless_uploaded_again(path)

    def _delete_unless_uploaded_again(self, path: Path) -> None:
        with self.lock:
            if self.pending[str(path)] == 0:
                self.pending.pop(str(path), None)
                path.unlink(missing_ok=True)


UPLOADS = UploadCounts()


def delete_upload(path) -> None:
    """Release `path` if Gradio stored it (an upload, see `UploadCounts`); never touch files the caller owns."""
    if path is None:
        return
    path = Path(path).resolve()
    if upload_folder() in path.parents and not _is_example_copy(path):
        UPLOADS.release(path)




def count_uploads(blocks) -> None:
    """Let Gradio record the uploads of `blocks` (a `gr.Blocks`) in `UPLOADS`, which its cache sweep also reads.

    `upload_file_set` and `temp_file_sets` are Gradio's private attributes: no public API tells when an
    upload's last reader is done (`delete_cache` sweeps by age, a `State`'s time-to-live holds values, not
    uploads). The Gradio version is pinned by requirements/lock.txt, and `make lock` runs the served
    tests of identical concurrent uploads (tests/test_app_server.py) on every new Gradio before it is pinned.
    """
    UPLOADS.update(blocks.upload_file_set)
    blocks.temp_file_sets = [UPLOADS if paths is blocks.upload_file_set else paths for paths in blocks.temp_file_sets]
    blocks.upload_file_set = UPLOADS
