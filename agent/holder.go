package agent

import (
	"fmt"
	"strings"
)

// CleanupOptions are the options of CleanupWith.
type CleanupOptions struct {
	// Force removes the state even when a live agent holds it (its
	// hooks stop intercepting; its address watch may put the address
	// back). `sluice agent --cleanup --force`.
	Force bool
}

// HeldError is returned by Start and Cleanup when another live agent
// process holds state they would replace or remove: an intercept
// address (with its guards) or a pin directory. Stop that agent first,
// or force (Options.Force, CleanupOptions.Force: the --force flag).
type HeldError struct {
	// Action is what was refused: "start agent" or "clean up".
	Action string
	// PID is the live agent's process id.
	PID int
	// What names each contested item, e.g. "intercept address
	// 169.254.77.77" or "pins under /sys/fs/bpf/sluice".
	What []string
}

func (e *HeldError) Error() string {
	verb := "remove them"
	if e.Action == "start agent" {
		verb = "take them over"
	}
	return fmt.Sprintf("%s: %s held by the live agent with pid %d; stop that agent first, or pass --force to %s anyway",
		e.Action, strings.Join(e.What, ", "), e.PID, verb)
}
