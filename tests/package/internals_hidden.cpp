// Compiled by run.sh find_package with the consumer's own compile command. Without
// SYSV_PROBE_DETAIL it names public API only and must compile; with SYSV_PROBE_DETAIL=<name>
// it names sysv::detail::<name>, which `import sysv;` must not make visible: that compile must
// fail, saying the declaration is not visible.
#include <boost/asio.hpp>
import sysv;

#ifdef SYSV_PROBE_DETAIL
using probe = sysv::detail::SYSV_PROBE_DETAIL;
#else
using probe = sysv::async_semaphore_set;
#endif

int main() {
    return sizeof(probe) == 0;
}
