// Benchmarks of the semaphore layer: ping-pong round trips, wake latency after idle, idle cost
// of pending waits, the mutex, the cost of ringing a doorbell and wakes among many waits, one
// header per section in sections/ (one translation unit with Asio for all of them). Every section
// compares the library with a thread blocked in semop measured side by side in the same run (rows
// of one run are interleaved).
#include "bench.hpp"

#include <boost/asio.hpp>

#include <sched.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

import sysv;

#include "wake_report.hpp"

namespace asio = boost::asio;
using bench::now_ns;

#include "sections/support.hpp" // first: what the sections below use

#include "sections/doorbell_cost.hpp"
#include "sections/idle.hpp"
#include "sections/mutex.hpp"
#include "sections/pingpong.hpp"
#include "sections/scale.hpp"
#include "sections/wake.hpp"

namespace {

const bench::registrar pingpong_section{
    {"pingpong", 10, "1. Ping-pong round trip between two processes", &run_pingpong}};
const bench::registrar wake_section{{"wake", 20, "2. Wake latency after idle", &run_wake}};
const bench::registrar idle_section{{"idle", 30, "3. Idle cost of pending waits", &run_idle}};
const bench::registrar mutex_section{{"mutex", 40, "4. Mutex", &run_mutex}};
const bench::registrar doorbell_section{
    {"doorbell", 45, "5. Cost of ringing a doorbell", &run_doorbell_cost}};
const bench::registrar scale_section{
    {"scale", 60, "7. Wakes among many pending waits", &run_scale}};

} // namespace
