"""Web data: WARC/WET records to main text, damaged records counted, URL and language filters,
and per-language and per-domain counts in the audit."""

import gzip
import json
import uuid

import pyarrow.parquet as pq

from lmforge.jobs.data import pipeline, sources
from lmforge.jobs.data.filters import Domains
from lmforge.operator.api.dataset import Source, UrlFilter

ARTICLE = {
    "en": "The committee met on Tuesday to discuss the new budget for the city library. Members"
    " agreed that the reading rooms need longer opening hours and more books for children.",
    "de": "Der Ausschuss traf sich am Dienstag, um den neuen Haushalt der Stadtbibliothek zu"
    " besprechen. Die Mitglieder waren sich einig, dass die Lesesäle länger geöffnet sein sollen.",
    "fr": "Le comité s'est réuni mardi pour discuter du nouveau budget de la bibliothèque de la"
    " ville. Les membres ont convenu que les salles de lecture doivent ouvrir plus longtemps.",
}


def record(kind: str, url: str, payload: bytes, content_type: str) -> bytes:
    """One WARC record, gzipped on its own as Common Crawl writes them."""
    head = (
        f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Target-URI: {url}\r\n"
        f"WARC-Record-ID: <urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url + kind)}>\r\n"
        f"WARC-Date: 2026-01-01T00:00:00Z\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return gzip.compress(head.encode() + payload + b"\r\n\r\n")


def response(url: str, body: bytes, status: str = "200 OK", kind: str = "text/html") -> bytes:
    http = f"HTTP/1.1 {status}\r\nContent-Type: {kind}; charset=utf-8\r\n"
    http += f"Content-Length: {len(body)}\r\n\r\n"
    return record("response", url, http.encode() + body, "application/http; msgtype=response")


def page(text: str) -> bytes:
    """An article between the navigation and footer every page of a site repeats."""
    return (
        "<html><head><title>News</title></head><body><nav><a href='/'>Home</a> <a href='/a'>"
        f"About us</a> <a href='/c'>Contact</a></nav><article><h1>Library news</h1><p>{text}</p>"
        "<p>" + text + "</p></article><footer>Copyright 2026 City Paper. All rights reserved."
        "</footer></body></html>"
    ).encode()


def read_all(path, max_bytes=1 << 20):
    config = Source(uri=path.as_uri(), format="warc")
    (file,) = sources.list_files([config])
    reading = sources.Reading()
    return list(sources.read(file, config, reading, max_bytes)), reading


def test_html_responses_become_their_main_text_and_wet_records_their_text(tmp_path):
    (tmp_path / "crawl.warc.gz").write_bytes(
        record("request", "https://news.example.com/1", b"GET /1 HTTP/1.1\r\n\r\n", "application/http; msgtype=request")
        + response("https://news.example.com/1", page(ARTICLE["en"]))
        + response("https://news.example.com/gone", b"<p>not here</p>", status="404 Not Found")
        + response("https://news.example.com/logo.png", b"\x89PNG....", kind="image/png")
        + record("conversion", "https://blog.example.org/2", ARTICLE["fr"].encode(), "text/plain")
    )  # fmt: skip
    documents, reading = read_all(tmp_path / "crawl.warc.gz")
    assert [url for _, url in documents] == [
        "https://news.example.com/1",
        "https://blog.example.org/2",
    ]
    text = documents[0][0]
    assert ARTICLE["en"] in text and "Library news" in text
    assert "Copyright" not in text and "Contact" not in text  # the boilerplate is gone
    assert documents[1][0] == ARTICLE["fr"]
    assert reading.skips == 0 and reading.digest.startswith("sha256:")


def test_damaged_records_are_counted_with_their_offset_and_the_rest_kept(tmp_path):
    good = [response(f"https://example.com/{i}", page(ARTICLE["en"])) for i in range(3)]
    broken = record("response", "https://example.com/broken", b"NOT HTTP\x00\r\n\r\n<p>x</p>",
                    "application/http; msgtype=response")  # fmt: skip
    huge = response("https://example.com/huge", page(ARTICLE["en"] * 200))
    (tmp_path / "a.warc.gz").write_bytes(good[0] + broken + good[1] + huge + good[2])
    documents, reading = read_all(tmp_path / "a.warc.gz", max_bytes=8192)
    assert [url for _, url in documents] == [f"https://example.com/{i}" for i in range(3)]
    offset = len(gzip.decompress(good[0]))  # offsets are in the uncompressed stream
    assert reading.skipped == [
        f"record at byte {offset} (https://example.com/broken): broken HTTP header",
        f"record at byte {offset + len(gzip.decompress(broken + good[1]))}"
        " (https://example.com/huge): longer than 8192 bytes (spec.cleaning.maxChars)",
    ]


def test_a_cut_off_archive_keeps_every_whole_record_before_the_cut(tmp_path):
    records = [response(f"https://example.com/{i}", page(ARTICLE["de"])) for i in range(20)]
    whole = b"".join(records)
    cut = len(b"".join(records[:12])) + len(records[12]) // 2  # in the middle of record 12
    (tmp_path / "cut.warc.gz").write_bytes(whole[:cut])
    documents, reading = read_all(tmp_path / "cut.warc.gz")
    assert [url for _, url in documents] == [f"https://example.com/{i}" for i in range(12)]
    record_12, rest = reading.skipped
    assert (
        record_12.startswith("record at byte ") and "(https://example.com/12): cut off" in record_12
    )
    assert rest.startswith("the rest of the file: cannot decompress:")
    assert reading.bytes == cut


def test_a_domain_blocks_its_subdomains_and_an_allow_list_keeps_only_its_own():
    blocked = Domains(UrlFilter(blocked_domains=["ads.example.net"]), ["casino.test"])
    assert blocked("https://www.casino.test/x") == (
        "casino.test: casino.test is in spec.filters.urls blocked domains"
    )
    assert blocked("http://eu.ads.example.net/y").startswith("eu.ads.example.net: ads.example.net")
    assert blocked("https://example.net/") is None and blocked("https://notcasino.test/") is None
    allowed = Domains(UrlFilter(allowed_domains=["example.org"]))
    assert allowed("https://docs.example.org/a") is None
    assert (
        allowed("https://example.com/a") == "example.com: not in spec.filters.urls.allowedDomains"
    )


def test_a_web_dataset_filters_by_domain_and_language_and_counts_both(spec, tmp_path):
    pages = []
    for i in range(12):
        language = ("en", "en", "de", "fr")[i % 4]
        host = ("news.example.com", "blog.example.org", "spam.casino.test")[i % 3]
        text = f"{ARTICLE[language]} ({i})"
        pages.append((f"https://{host}/{i}", language, response(f"https://{host}/{i}", page(text))))
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "crawl.warc.gz").write_bytes(b"".join(p for _, _, p in pages))
    config = spec(
        [{"uri": f"{(tmp_path / 'raw').as_uri()}/*.warc.gz", "format": "warc"}],
        filters={"urls": {"blockedDomains": ["casino.test"]},
                 "language": {"enabled": True, "languages": ["en", "de"]}},
        deduplication={"exact": False, "near": {"enabled": False}},
    )  # fmt: skip
    out = tmp_path / "out"
    manifest = pipeline.run(config, out.as_uri())
    audit = json.loads((out / manifest["audit"]["path"]).read_text())
    casino = [u for u, _, _ in pages if "casino" in u]
    french = [u for u, lang, _ in pages if lang == "fr" and "casino" not in u]
    kept = [(u, lang) for u, lang, _ in pages if u not in casino and u not in french]
    assert audit["removed"] == {"url": len(casino), "language": len(french)}
    assert audit["languages"] == {
        lang: n for lang in ("en", "de") if (n := sum(k == lang for _, k in kept))
    }
    hosts = [u.split("/")[2] for u, _ in kept]
    assert audit["domains"] == {
        "count": 2,
        "top": {h: hosts.count(h) for h in sorted(set(hosts), key=lambda h: -hosts.count(h))},
    }
    rows = pq.read_table(out / manifest["audit"]["removed"]).to_pylist()
    assert sorted(r["url"] for r in rows if r["stage"] == "url") == sorted(casino)
    for row in (r for r in rows if r["stage"] == "language"):
        assert (
            row["url"] in french and row["detail"] == "fr: not in spec.filters.language.languages"
        )
