"""What a test reads of a command's stderr."""


def without_notices(err: str) -> str:
    """stderr less the thread policy's notices (`llamalab: 2 threads (...)`, logged once a command has run a
    step): what is left is what a failure said."""
    return "\n".join(line for line in err.strip().splitlines() if not line.startswith("llamalab: "))
