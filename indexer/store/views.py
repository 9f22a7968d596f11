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
    # Every base of every image (see queries/lineage.py): a base ends on a proper prefix of the
    # image's ChainIDs, at the base's own depth. distance 1 is the nearest base; resources that
    # share one ChainID share a distance. A join on the stored top ChainIDs, so it scales with the
    # number of layers.
    "image_bases": """
        SELECT p.image_id, b.id AS base_id, p.shared_layers,
               dense_rank() OVER (PARTITION BY p.image_id ORDER BY p.shared_layers DESC) AS distance
        FROM (
            SELECT i.id AS image_id, c.chain, c.pos::BIGINT AS shared_layers
            FROM images i, UNNEST(list_slice(i.chain_ids, 1, len(i.chain_ids) - 1)) WITH ORDINALITY AS c(chain, pos)
            WHERE i.kind = 'image'
        ) p
        JOIN images b ON b.chain_id = p.chain AND len(b.chain_ids) = p.shared_layers AND b.kind = 'image'
    """,
}
