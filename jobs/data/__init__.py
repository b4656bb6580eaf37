"""The Dataset job: raw text in; cleaned, deduplicated, filtered, tokenized Arrow shards out."""
