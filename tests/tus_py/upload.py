"""tuspy against the API, driven by tests/test_tus_clients.py.

One JSON argument: {endpoint, file, chunkSize, metadata, uploadUrl?, checksum?}. Prints
one JSON object per line: {"event": "url"}, {"event": "offset"} after each acknowledged
chunk, then {"event": "done"} with what the last answer said of the file (X-File-Url,
X-Owner-Token). The test kills this process mid-upload and runs it again with uploadUrl.
"""

import json
import sys

from tusclient import client


def say(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    uploader = client.TusClient(cfg["endpoint"]).uploader(
        cfg["file"],
        url=cfg.get("uploadUrl"),
        chunk_size=cfg["chunkSize"],
        metadata=cfg["metadata"],
        upload_checksum=bool(cfg.get("checksum")),
        # A chunk refused while a killed request still holds the upload (423) is tried
        # again from the offset HEAD tells.
        retries=5,
        retry_delay=1,
    )
    if not uploader.url:
        uploader.set_url(uploader.create_url())
    say(event="url", url=uploader.url, offset=uploader.offset)
    while uploader.offset < uploader.get_file_size():
        uploader.upload_chunk()
        say(event="offset", offset=uploader.offset)
    headers = uploader.request.response_headers if uploader.request else {}
    say(event="done", url=uploader.url, fileUrl=headers.get("x-file-url"), ownerToken=headers.get("x-owner-token"))


if __name__ == "__main__":
    main()
