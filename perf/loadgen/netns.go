// Package loadgen is trireme's own load generator: a TCP and UDP server
// and client that run in two network namespaces of one process and measure
// new connections (and new UDP flows) per second, connect and first-response
// latency, bulk throughput and round-trip time.
//
// A socket belongs to the network namespace of the thread that created it,
// for its whole life. So only socket creation happens on a thread switched
// into a namespace (the listener once; client sockets in batches by one
// "socket factory" goroutine); connecting, reading and writing run on
// ordinary goroutines through Go's poller, with no locked-thread hand-off
// on the measured path.
package loadgen

// Network namespaces are entered and left with netsetup.EnterNetns and
// netsetup.InNetns, the one implementation of the locked-thread switch.
