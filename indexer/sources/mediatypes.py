"""Media types of the OCI image spec and of Docker's distribution formats."""

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEXES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1 = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
IMAGE_CONFIGS = frozenset({OCI_CONFIG, DOCKER_CONFIG})

# Layers stored as plain tar: their sizes are not compressed sizes.
UNCOMPRESSED_LAYERS = frozenset(
    {OCI_LAYER_TAR, DOCKER_LAYER_TAR, "application/vnd.oci.image.layer.nondistributable.v1.tar"}
)

# buildx marks attestation manifests in an index with this annotation.
REFERENCE_TYPE = "vnd.docker.reference.type"
ATTESTATION = "attestation-manifest"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

# The longest media type RFC 6838 allows (a type and a subtype of 127 characters each). Longer ones
# are read but never kept as a cache key, so a hostile one cannot multiply memory.
MAX_LENGTH = 255
