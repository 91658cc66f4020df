// Package node is the node daemon around the dataplane: its configuration,
// its life, the PUs it enforces, and the local control API (HTTP+JSON on a
// unix socket) with its client, which the CLI uses.
//
// Where things are:
//
//	config.go, flowtable.go  the configuration file
//	daemon.go       the Daemon (its state, grouped), New, the timer and kernel loops
//	frameio.go      the frame path: each PU's TAP readers, a frame read, decoded, decided, sent
//	settings.go     the config's enumerated settings (midStream, onPolicyChange) and PU states
//	load.go         secrets, tokens and the policy file (config networks merged before the one compilation); policy updates
//	lifecycle.go    Start (plumb, restore, serve) and Stop
//	ready.go, sdnotify.go  readiness: /healthz, /readyz and the gate before the API; sd_notify
//	pu.go           a PU's life: names, TAPs, steering, register, add, remove, monitor events, addresses
//	registry.go     puRegistry: the one list of PUs, by ID, veth and namespace
//	controller.go   the Controller the control API serves: list, attach, create, detach, exclude, stats
//	api.go, client.go, metrics.go  the control API, its client, the Prometheus view of Stats
//	validate.go     checks of API requests (names, labels, tags, attachable namespaces)
//	addralloc.go    addrAllocator: addresses of the node subnet for the PUs trireme creates
//	exclusions.go   the excluded networks: the policy's and the runtime ones, in the kernel's set
//	injection.go    injection ports: one per bridge, for the frames leaving PUs
//	state.go        the state directory (state.json, one file per PU) kept across restarts
//	owner.go        the node bridge, what the daemon owns in the kernel, Purge
//	reaper.go       background deletion of the TAPs of detached PUs
//	kerneldrops.go  the kernel's drop counters of PUs (anti-spoofing, packet budget), by reason
//	backlog.go      the kernel's input backlog, kept large enough for the PUs' bridges
//	sink.go         the flow log (asynchronous, aggregated, rotated)
//	flowring.go     the ring of recent flow records (`trireme flows`, the web page), fed with the flow log
//	flowquery.go, flowapi.go, flowclient.go  GET /v1/flows: its filters, its handler (follow), its client
//	flowcounters.go the kernel's per-entry counters added to the records of open flows
//	observe.go      the config's observe section (ring size, the web page's TCP listener)
//	web.go, servicemap.go, webui/  the web page: its read-only API, the service map, its embedded files
package node
