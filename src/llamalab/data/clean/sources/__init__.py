"""Per-source preprocessing of the paper's §2.1: GitHub, arXiv, Wikipedia, StackExchange, Books."""
