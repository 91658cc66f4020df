// Package loadgen is trireme's own load generator: a TCP server and client
// that run in two network namespaces of one process and measure new
// connections per second, connect latency, bulk throughput and round-trip
// time.
//
// A socket belongs to the network namespace of the thread that created it,
// for its whole life. So only socket creation happens on a thread switched
// into a namespace (the listener once; client sockets in batches by one
// "socket factory" goroutine); connecting, reading and writing run on
// ordinary goroutines through Go's poller, with no locked-thread hand-off
// on the measured path.
package loadgen

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// OpenNetns returns a handle to a named network namespace (a name under
// /run/netns) or a path such as /proc/PID/ns/net. The caller closes it.
func OpenNetns(nameOrPath string) (netns.NsHandle, error) {
	var h netns.NsHandle
	var err error
	if len(nameOrPath) > 0 && nameOrPath[0] == '/' {
		h, err = netns.GetFromPath(nameOrPath)
	} else {
		h, err = netns.GetFromName(nameOrPath)
	}
	if err != nil {
		return netns.None(), fmt.Errorf("loadgen: netns %s: %w", nameOrPath, err)
	}
	return h, nil
}

// EnterNetns locks the calling goroutine to its OS thread and switches the
// thread into ns. leave switches it back and unlocks it. If switching back
// fails, leave keeps the thread locked, so that the runtime discards the
// thread when the goroutine exits instead of reusing it in the wrong
// namespace.
//
// Exiting a goroutine while locked is not the way to drop a switched
// thread: on the main thread the runtime cannot exit and parks it forever,
// still in the namespace, which then outlives its deletion.
func EnterNetns(ns netns.NsHandle) (leave func(), err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("loadgen: current netns: %w", err)
	}
	if err := netns.Set(ns); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("loadgen: setns: %w", err)
	}
	return func() {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		orig.Close()
	}, nil
}

// InNetns runs fn on the calling goroutine's thread switched into ns, and
// switches back.
func InNetns(ns netns.NsHandle, fn func() error) error {
	leave, err := EnterNetns(ns)
	if err != nil {
		return err
	}
	defer leave()
	return fn()
}
