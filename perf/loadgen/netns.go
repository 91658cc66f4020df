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

// InNetns runs fn on a new OS thread switched into ns. The goroutine exits
// without unlocking its thread, so the runtime discards the thread instead
// of reusing it in the wrong namespace.
func InNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("loadgen: setns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
