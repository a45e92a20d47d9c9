package agent

import (
	"reflect"
	"testing"
)

// A run of events from one process image makes its identity once: the
// exe is read once and the events share the identity.
func TestIdentityMemoRunOfOneImage(t *testing.T) {
	f := &fakeProc{exe: map[int]string{7: "/usr/bin/curl"}}
	a := &Agent{exes: newFakeCache(8, f)}
	var m identityMemo
	ev := Event{PID: 7, UID: 1000, Comm: "curl", Cgroup: "/kubepods/pod1/cri-containerd-abc", startTime: 100, execID: 1}
	first := m.identity(a, &ev)
	for range 5 {
		if got := m.identity(a, &ev); got != first {
			t.Fatalf("identity made again for the same image: %+v", got)
		}
	}
	if first.Exe != "/usr/bin/curl" || first.Comm != "curl" || first.UID != 1000 {
		t.Errorf("identity %+v", first)
	}
	if f.reads != 1 {
		t.Errorf("%d reads of /proc/7/exe, want 1", f.reads)
	}
}

// The attacker: connect as an allowed binary, exec another, connect
// again within the same batch. The second event names the new binary.
func TestIdentityMemoExecIsANewImage(t *testing.T) {
	f := &fakeProc{exe: map[int]string{7: "/usr/bin/allowed"}}
	a := &Agent{exes: newFakeCache(8, f)}
	var m identityMemo
	ev := Event{PID: 7, UID: 1000, Comm: "allowed", startTime: 100, execID: 1}
	if got := m.identity(a, &ev).Exe; got != "/usr/bin/allowed" {
		t.Fatalf("exe = %q", got)
	}
	f.exe[7] = "/tmp/evil" // execve: same pid, comm and start; exec generation 2
	ev.execID = 2
	if got := m.identity(a, &ev).Exe; got != "/tmp/evil" {
		t.Errorf("after execve exe = %q, want /tmp/evil", got)
	}
}

// Every input of the identity is part of the memo's key.
func TestIdentityMemoKey(t *testing.T) {
	f := &fakeProc{exe: map[int]string{7: "/usr/bin/curl", 8: "/usr/bin/wget"}}
	a := &Agent{exes: newFakeCache(8, f)}
	base := Event{PID: 7, UID: 1000, Comm: "curl", Cgroup: "/a", startTime: 100, execID: 1}
	for name, change := range map[string]func(*Event){
		"pid":        func(e *Event) { e.PID = 8 },
		"uid":        func(e *Event) { e.UID = 0 },
		"comm":       func(e *Event) { e.Comm = "curl2" },
		"cgroup":     func(e *Event) { e.Cgroup = "/b" },
		"start time": func(e *Event) { e.startTime = 200 },
		"exec id":    func(e *Event) { e.execID = 2 },
	} {
		var m identityMemo
		first := m.identity(a, &base)
		ev := base
		change(&ev)
		second := m.identity(a, &ev)
		if second == first {
			t.Errorf("%s changed, identity kept: %+v", name, second)
		}
		want := processIdentity(t.Context(), nil, a.exes, ev.image(), ev.UID, ev.Comm, ev.Cgroup)
		if !reflect.DeepEqual(*second, want) {
			t.Errorf("%s changed: identity %+v, want %+v", name, *second, want)
		}
	}
}

// An image the hooks did not name (an older kernel: no start time or
// exec id) is never remembered: its pid alone could be a new process.
func TestIdentityMemoUnnamedImage(t *testing.T) {
	f := &fakeProc{exe: map[int]string{7: "/usr/bin/curl"}}
	a := &Agent{exes: newFakeCache(8, f)}
	var m identityMemo
	ev := Event{PID: 7, Comm: "curl"}
	first := m.identity(a, &ev)
	if second := m.identity(a, &ev); second == first || f.reads != 2 {
		t.Errorf("identity of an unnamed image remembered (%d reads of /proc/7/exe, want 2)", f.reads)
	}
}
