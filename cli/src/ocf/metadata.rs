//! The agent's OCF 1.1 meta-data. Kept to what both Debian's `ra-api-1.dtd` (which
//! `ocf-tester` validates against) and `metadata.rng` accept: no `unique-group`, content types
//! string and integer only.

pub const METADATA: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="vm" version="0.1.0">
<version>1.1</version>
<longdesc lang="en">
One VM protected by remus (Remus-style checkpointing) across two hosts, as a promotable clone:
the promoted instance runs the VM (remus protect, or a backup that took the VM over), the
unpromoted instance is its backup (remus receive). Promotion of a backup holding a committed
checkpoint is a remus failover, which follows remus' own fencing rules (the witness, when
configured); remus' own failure detection may take the VM over first, and the agent then
reports it so that Pacemaker promotes that instance without restarting it. Requires the clone
meta attributes promotable=true, promoted-max=1, clone-max=2 and notify=true (a planned move
is a live switch-over started from the pre-demote notification).
</longdesc>
<shortdesc lang="en">A VM protected by remus (promoted: runs the VM; unpromoted: its backup)</shortdesc>
<parameters>
<parameter name="config" unique="1" required="1">
<longdesc lang="en">
The VM's remus configuration file on this host (every key in remus' cli/README.md). Its
run_dir is where the agent finds remus' pid file and control sockets.
</longdesc>
<shortdesc lang="en">remus configuration file</shortdesc>
<content type="string"/>
</parameter>
<parameter name="addresses" unique="0" required="0">
<longdesc lang="en">
Each cluster node's replication address, as NODE=ADDRESS separated by spaces (for example
"hosta=10.99.0.1 hostb=10.99.0.2"). When this host receives, remus listens on its own
address; when it protects, it replicates to the other node's. Without it, the configuration's
[replication] backup is used as it is, which only suits a host that always has one role.
</longdesc>
<shortdesc lang="en">replication address of each node</shortdesc>
<content type="string" default=""/>
</parameter>
<parameter name="remus" unique="0" required="0">
<longdesc lang="en">The remus program (the daemons are looked up next to it).</longdesc>
<shortdesc lang="en">remus program</shortdesc>
<content type="string" default="/usr/local/bin/remus"/>
</parameter>
</parameters>
<actions>
<action name="start" timeout="60s"/>
<action name="stop" timeout="60s"/>
<action name="promote" timeout="120s"/>
<action name="demote" timeout="120s"/>
<action name="monitor" depth="0" timeout="20s" interval="10s" role="Promoted"/>
<action name="monitor" depth="0" timeout="20s" interval="11s" role="Unpromoted"/>
<action name="notify" timeout="120s"/>
<action name="meta-data" timeout="5s"/>
<action name="validate-all" timeout="20s"/>
</actions>
</resource-agent>
"#;
