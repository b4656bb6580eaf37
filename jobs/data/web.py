"""Web archives: WARC and WET files (Common Crawl's) through fastwarc; the main text of each HTML
page through resiliparse, as FineWeb and datatrove extract it (resiliparse rather than
trafilatura: the same main-content rules at a small fraction of the time per page)."""

from __future__ import annotations

import io
from collections.abc import Iterator

from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding

HTML = ("text/html", "application/xhtml+xml")


def records(stream: io.BufferedIOBase, max_bytes: int, skip) -> Iterator[tuple[str, str]]:
    """(text, URL) of each HTML response (its main text) and each WET conversion record.

    Other records (requests, metadata, images, redirects) are not documents and pass silently.
    A damaged record is skip(where) with its byte offset in the uncompressed stream: a broken
    HTTP header, a payload longer than max_bytes, or one cut short by the end of the stream."""
    kinds = WarcRecordType.response | WarcRecordType.conversion
    for record in ArchiveIterator(stream, record_types=kinds, parse_http=True):
        url = record.headers.get("WARC-Target-URI") or ""
        where = f"record at byte {record.stream_pos} ({url})"
        if record.record_type == WarcRecordType.response:
            headers = record.http_headers
            status = headers.status_code if headers is not None else None
            if status is None:  # no status line fastwarc could parse
                skip(f"{where}: broken HTTP header")
                continue
            if status != 200 or record.http_content_type not in HTML:
                continue
        body = record.reader.read(max_bytes + 1)
        if len(body) > max_bytes:
            skip(f"{where}: longer than {max_bytes} bytes (spec.cleaning.maxChars)")
            continue
        if len(body) < record.content_length:
            skip(f"{where}: cut off after {len(body)} of {record.content_length} bytes")
            continue
        if record.record_type == WarcRecordType.conversion:
            yield bytes_to_str(body, "utf-8"), url
            continue
        charset = record.http_charset or detect_encoding(body)
        text = extract_plain_text(bytes_to_str(body, charset), main_content=True)
        if text:
            yield text, url
