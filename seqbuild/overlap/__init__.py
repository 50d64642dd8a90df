"""Reference galleries and dedup-overlap: remove identities found in MS-Celeb-1M, LFW, YTF or an opt-out list."""
