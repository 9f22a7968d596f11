"""Views for analysts, defined over whatever relation `images` is: a table or a Parquet scan.

Imports nothing heavy, since the read path creates these too.
"""

VIEWS = {
    "image_layers": """
        SELECT i.id AS image_id, i.registry, i.name, i.digest AS image_digest,
               l.pos::BIGINT - 1 AS position, l.layer.digest AS digest, l.layer.size AS size,
               l.layer.media_type AS media_type, l.layer.urls AS urls
        FROM images i, UNNEST(i.layers) WITH ORDINALITY AS l(layer, pos)
    """,
}


def create_views(con) -> None:
    for name, body in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
