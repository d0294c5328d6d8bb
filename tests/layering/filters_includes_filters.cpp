// Must compile with the filters' include root alone (ctest
// layering_filters_root): the control for filters_includes_proxy.cpp.
#include "filters/filter.h"
