// The one translation unit with Boost.Test's header-only runner (the prebuilt runner library is
// built against libstdc++ and cannot link with libc++ code).
#define BOOST_TEST_MODULE asio_sysv
#include <boost/test/included/unit_test.hpp>
