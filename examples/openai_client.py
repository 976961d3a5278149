"""Use a running `ragtune serve` from the official OpenAI client and from LangChain, unchanged.

ragtune index runs/pubmedqa/model runs/pubmedqa/data --out runs/pubmedqa/index
ragtune serve runs/pubmedqa/index &
python examples/openai_client.py --base-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import json
import os

import httpx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--question", default="Does age influence growth hormone response to exercise?")
    args = parser.parse_args()
    key = os.environ.get("RAGTUNE_API_KEY", "not-needed")

    import openai

    client = openai.OpenAI(base_url=args.base_url, api_key=key)
    response = client.embeddings.create(input=[args.question, "a second text"], model="tuned")
    print(
        json.dumps(
            {
                "openai": {
                    "vectors": len(response.data),
                    "dim": len(response.data[0].embedding),
                    "tokens": response.usage.total_tokens,
                }
            }
        )
    )

    # LangChain's OpenAI embeddings class, pointed at ragtune. Token-length checking is off because it needs
    # tiktoken's files for OpenAI models; ragtune truncates to its own model's length anyway.
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model="tuned", base_url=args.base_url, api_key=key, check_embedding_ctx_length=False)
    vector = embeddings.embed_query(args.question)
    print(json.dumps({"langchain": {"dim": len(vector)}}))

    server = args.base_url.removesuffix("/v1")
    found = httpx.post(
        f"{server}/search", json={"query": args.question, "k": 3}, headers={"Authorization": f"Bearer {key}"}
    ).json()
    print(json.dumps({"search": [{"id": h["id"], "score": round(h["score"], 4)} for h in found["results"]]}))


if __name__ == "__main__":
    main()
