// Package local is Ambit's local-mode runtime: a whole mesh on one Linux
// machine, without Kubernetes. It plays the part a cluster plays: nodes are
// network namespaces joined by an underlay it owns, pods are network
// namespaces attached to their node through the real CNI protocol (the
// reference bridge and host-local plugins, with ambit-cni chained last), and
// each pod runs its manifest's command as a process inside its namespace.
//
// A supervisor process (`ambit local run`, started by `ambit local up`) owns
// everything and records it in a state directory; `down`, `status` and
// `exec` read that directory. Everything the runtime creates is named with
// the "ambit-" prefix and lives inside namespaces it created, so cleanup
// after a crash never needs to guess, and the host's own interfaces, routes
// and firewall are never touched.
package local
