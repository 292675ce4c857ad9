// Start-up policy of the example programs for CPUs shared with other processes.
//
// LibTorch's OpenMP runtime (libgomp) lets an idle worker spin for about 300000
// iterations before it sleeps. When another process holds one of the cores, a
// spinning worker burns the time slices its peers need to reach the barrier, and
// a run slows by far more than the share of the cores it lost. A passive wait
// policy (sleep at once) removes that, and one OpenMP thread per free core keeps
// the parallel regions from waiting on a thread that has no core. Both cost time
// when the cores are free (a sleeping worker is slow to wake on an idle vCPU), so
// they are chosen only when another task is runnable at start-up (procs_running
// in /proc/stat, least of a few looks), and the runtime's defaults stay otherwise. libgomp reads
// OMP_WAIT_POLICY and GOMP_SPINCOUNT in its own constructor, before main() and before any C++ static
// constructor of the program, and offers no call to change them later. So the
// programs re-execute themselves with OMP_WAIT_POLICY=passive (and OMP_NUM_THREADS
// = free cores unless the user set it) from an ELF
// .preinit_array entry (process_setup.cpp): the dynamic loader runs it after
// mapping the libraries and before any of their constructors, so the first image
// costs only the loader's relocations (~10 ms), not LibTorch's start-up. (A plain
// setenv there does not work: libc's own initialiser, which runs next, resets
// environ to the loader's copy.)
//
// The examples, not the library, do this: a process-wide environment change is
// the application's decision, and a library cannot run before libgomp's
// constructor anyway (only the executable's .preinit_array does).
#pragma once

namespace sgdx_examples {

enum class WaitPolicyAction {
  kSetPassive,  // nothing chosen: passive wait and free-core threads if the cores are taken
  kKeepUser,    // the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT: keep it
  kDisabled,    // SGDX_NO_PASSIVE_WAIT is set (and not "0" or empty): the runtime's default
};

// The decision from the three variables as found (nullptr: unset).
WaitPolicyAction wait_policy_action(const char* omp_wait_policy, const char* gomp_spincount,
                                    const char* sgdx_no_passive_wait);

// OpenMP threads when `busy` of `cores` are taken by other runnable tasks.
int threads_for_free_cores(int cores, int busy);

}  // namespace sgdx_examples
