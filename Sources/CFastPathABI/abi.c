// The layouts the tc program and the daemon share: sizes both compilers must agree on.
#include "fast_path_abi.h"

_Static_assert(sizeof(struct fp_config) == 12, "fp_config is the map's 12-byte value");
_Static_assert(sizeof(struct fp_ip4_prefix) == 8, "LPM key: length then address");
_Static_assert(sizeof(struct fp_ip6_prefix) == 20, "LPM key: length then address");
