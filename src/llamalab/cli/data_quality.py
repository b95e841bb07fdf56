"""`llamalab data train-quality`: its options and call (the `data` subcommand's other actions are in data.py
and data_clean.py)."""


def add_train_quality(sub):
    pq = sub.add_parser(
        "train-quality", help="train the quality classifier (linear, hashed n-grams) used by `data clean`",
        description="Fit the paper's linear quality classifier: logistic regression on hashed word uni- and "
                    "bigrams, positives (e.g. pages cited by Wikipedia) against negatives (random pages).",
        epilog="example: llamalab data train-quality --positive refs.jsonl --negative crawl.jsonl.gz --out q.npz")
    pq.add_argument("--positive", nargs="+", required=True, metavar="PATH", help="good documents (files/dirs)")
    pq.add_argument("--negative", nargs="+", required=True, metavar="PATH", help="other documents (files/dirs)")
    pq.add_argument("--out", required=True, help="model file to write (.npz)")
    pq.add_argument("--text-field", default="text", help="field/column holding the text")


def run_train_quality(args):
    from ..data.clean import require

    require()
    from ..atomic import check_apart
    from ..data.clean.quality import read_texts, save, train

    check_apart(args.out, [*args.positive, *args.negative])
    positive, negative = read_texts(args.positive, args.text_field), read_texts(args.negative, args.text_field)
    result = train(positive, negative)
    save(args.out, result)
    print(f"{args.out}: {result['positive']:,} positive, {result['negative']:,} negative documents; held-out "
          f"accuracy {result['held_out_accuracy']:.3f} on {result['held_out']:,}")
