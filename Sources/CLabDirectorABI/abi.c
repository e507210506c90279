// The layouts the lab director's program and its loader share: sizes both compilers must agree on.
#include "lab_director_abi.h"

_Static_assert(sizeof(struct ld_config) == 16 + 4 * LD_MAX_PROXIES + LD_MAX_PROXIES, "ld_config: no padding");
_Static_assert(sizeof(struct ld_counters) == 32, "ld_counters: four u64 words");
