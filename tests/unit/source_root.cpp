// postern::test::source_root(), declared in test_util.h. Only this file is
// compiled with the checkout's path, so the other tests' objects stay the same
// in a checkout elsewhere (ccache hits).
#include "test_util.h"

namespace postern::test {

std::string source_root() { return POSTERN_SOURCE_DIR; }

}  // namespace postern::test
