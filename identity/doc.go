// Package identity is what a processing unit is, as every other package sees
// it: its tags (key=value pairs, sorted by key), the rules tags obey (which
// keys are reserved for trireme, what a label may contain) and Identity, the
// tags prepared once for every policy decision about a peer (interned into
// integer symbols).
//
// It imports nothing of trireme's and no Kubernetes library, so that the
// token handshake (tokens), the monitors, the daemon and the command line
// share one definition without depending on the policy engine.
package identity
