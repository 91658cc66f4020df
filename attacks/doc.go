// Package attacks is trireme's live attack suite: each test builds a real
// node (network namespaces, the node bridge, the real `trireme daemon`),
// lets an attacker craft frames (gopacket over an AF_PACKET socket,
// testenv.RawPort) from inside a PU, from a host of the target networks
// that runs no enforcer, or from the underlay between two nodes, and
// asserts two things: nothing reaches the victim's socket, and the daemon
// names the drop (a reason in `trireme stats`, or a counter).
// docs/security.md maps every attack class to its defence and to the test
// here that proves it.
package attacks
