package main

import (
	"fmt"
	"os"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"

	"github.com/trireme-go/trireme/netsetup"
)

// netnsExecEnv marks the process image that runInNetns exec'ed inside the
// namespace: if it finds itself elsewhere, it fails instead of looping.
const netnsExecEnv = "TRIREME_NETNS_EXEC"

// runInNetns makes the whole process run in the network namespace name (a
// name under /run/netns or a path such as /proc/PID/ns/net) before anything
// else runs, so that every goroutine (the daemon's netlink, nftables, TAP
// and socket work runs on many threads) is in it: a namespace is a
// thread's, and Go's threads are not chosen. It returns nil when the process
// already is in it. Otherwise it locks this goroutine to its thread, moves
// the thread into the namespace (netsetup.EnterNetns) and execs the same
// binary with the same arguments from it: execve keeps the calling
// thread's namespace and ends the others, so the new image starts with its
// one thread in the namespace, under the same PID (systemd's main PID,
// signals and sd_notify keep working). It only returns on an error.
func runInNetns(name string) error {
	target, err := netsetup.OpenNetnsPath(name)
	if err != nil {
		return fmt.Errorf("--netns: %w", err)
	}
	defer target.Close()
	runtime.LockOSThread() // released by exec or below
	defer runtime.UnlockOSThread()
	cur, err := netns.Get()
	if err != nil {
		return fmt.Errorf("--netns: current namespace: %w", err)
	}
	defer cur.Close()
	if cur.Equal(target) {
		return nil
	}
	if os.Getenv(netnsExecEnv) != "" {
		return fmt.Errorf("--netns %s: exec'ed into the namespace but not in it", name)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--netns: %w", err)
	}
	leave, err := netsetup.EnterNetns(target)
	if err != nil {
		return fmt.Errorf("--netns %s: %w", name, err)
	}
	err = syscall.Exec(self, os.Args, append(os.Environ(), netnsExecEnv+"="+name))
	leave()
	return fmt.Errorf("--netns %s: exec %s: %w", name, self, err)
}
