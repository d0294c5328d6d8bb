// Must NOT compile with the filters' include root (ctest
// layering_filters_cannot_include_proxy): filters/ never includes proxy/
// (docs/architecture.md).
#include "proxy/config.h"
