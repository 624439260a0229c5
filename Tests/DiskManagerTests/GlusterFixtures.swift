/// Output of glusterfs-server 10.3 (Debian bookworm's package), captured verbatim from a
/// real glusterd on the development machine (single node "vm", bricks on XFS loop devices
/// mounted under /tmp/gl), 2026-12-05, by the commands named above each fixture. Not
/// edited: the parser is tested against what gluster really prints.
enum GlusterFixtures {
    /// `gluster --xml volume info gv0`: a started replica-3 volume, three bricks on one host (created with force).
    static let volumeInfoReplica3 = #"""
    <?xml version="1.0" encoding="UTF-8" standalone="yes"?>
    <cliOutput>
      <opRet>0</opRet>
      <opErrno>0</opErrno>
      <opErrstr/>
      <volInfo>
        <volumes>
          <volume>
            <name>gv0</name>
            <id>b8770ada-8085-458c-8cae-435d953f09b8</id>
            <status>1</status>
            <statusStr>Started</statusStr>
            <snapshotCount>0</snapshotCount>
            <brickCount>3</brickCount>
            <distCount>1</distCount>
            <replicaCount>3</replicaCount>
            <arbiterCount>0</arbiterCount>
            <disperseCount>0</disperseCount>
            <redundancyCount>0</redundancyCount>
            <type>2</type>
            <typeStr>Replicate</typeStr>
            <transport>0</transport>
            <bricks>
              <brick uuid="cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451">vm:/tmp/gl/b1/brick<name>vm:/tmp/gl/b1/brick</name><hostUuid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</hostUuid><isArbiter>0</isArbiter></brick>
              <brick uuid="cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451">vm:/tmp/gl/b2/brick<name>vm:/tmp/gl/b2/brick</name><hostUuid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</hostUuid><isArbiter>0</isArbiter></brick>
              <brick uuid="cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451">vm:/tmp/gl/b3/brick<name>vm:/tmp/gl/b3/brick</name><hostUuid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</hostUuid><isArbiter>0</isArbiter></brick>
            </bricks>
            <optCount>5</optCount>
            <options>
              <option>
                <name>cluster.granular-entry-heal</name>
                <value>on</value>
              </option>
              <option>
                <name>storage.fips-mode-rchecksum</name>
                <value>on</value>
              </option>
              <option>
                <name>transport.address-family</name>
                <value>inet</value>
              </option>
              <option>
                <name>nfs.disable</name>
                <value>on</value>
              </option>
              <option>
                <name>performance.client-io-threads</name>
                <value>off</value>
              </option>
            </options>
          </volume>
          <count>1</count>
        </volumes>
      </volInfo>
    </cliOutput>
    """#

    /// `gluster --xml volume info ev0`: a created (not started) disperse 3 redundancy 1 volume.
    static let volumeInfoDisperse = #"""
    <?xml version="1.0" encoding="UTF-8" standalone="yes"?>
    <cliOutput>
      <opRet>0</opRet>
      <opErrno>0</opErrno>
      <opErrstr/>
      <volInfo>
        <volumes>
          <volume>
            <name>ev0</name>
            <id>e847cda1-5bf3-4a9b-95be-8e14830a70e6</id>
            <status>0</status>
            <statusStr>Created</statusStr>
            <snapshotCount>0</snapshotCount>
            <brickCount>3</brickCount>
            <distCount>1</distCount>
            <replicaCount>1</replicaCount>
            <arbiterCount>0</arbiterCount>
            <disperseCount>3</disperseCount>
            <redundancyCount>1</redundancyCount>
            <type>4</type>
            <typeStr>Disperse</typeStr>
            <transport>0</transport>
            <bricks>
              <brick uuid="cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451">vm:/tmp/gl/e1/brick<name>vm:/tmp/gl/e1/brick</name><hostUuid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</hostUuid><isArbiter>0</isArbiter></brick>
              <brick uuid="cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451">vm:/tmp/gl/e2/brick<name>vm:/tmp/gl/e2/brick</name><hostUuid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</hostUuid><isArbiter>0</isArbiter></brick>
              <brick uuid="cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451">vm:/tmp/gl/e3/brick<name>vm:/tmp/gl/e3/brick</name><hostUuid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</hostUuid><isArbiter>0</isArbiter></brick>
            </bricks>
            <optCount>3</optCount>
            <options>
              <option>
                <name>storage.fips-mode-rchecksum</name>
                <value>on</value>
              </option>
              <option>
                <name>transport.address-family</name>
                <value>inet</value>
              </option>
              <option>
                <name>nfs.disable</name>
                <value>on</value>
              </option>
            </options>
          </volume>
          <count>1</count>
        </volumes>
      </volInfo>
    </cliOutput>
    """#

    /// `gluster --xml volume status gv0`: every brick online, and the self-heal daemon.
    static let volumeStatusAllUp = #"""
    <?xml version="1.0" encoding="UTF-8" standalone="yes"?>
    <cliOutput>
      <opRet>0</opRet>
      <opErrno>0</opErrno>
      <opErrstr/>
      <volStatus>
        <volumes>
          <volume>
            <volName>gv0</volName>
            <nodeCount>4</nodeCount>
            <node>
              <hostname>vm</hostname>
              <path>/tmp/gl/b1/brick</path>
              <peerid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</peerid>
              <status>1</status>
              <port>58365</port>
              <ports>
                <tcp>58365</tcp>
                <rdma>N/A</rdma>
              </ports>
              <pid>609</pid>
            </node>
            <node>
              <hostname>vm</hostname>
              <path>/tmp/gl/b2/brick</path>
              <peerid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</peerid>
              <status>1</status>
              <port>54836</port>
              <ports>
                <tcp>54836</tcp>
                <rdma>N/A</rdma>
              </ports>
              <pid>625</pid>
            </node>
            <node>
              <hostname>vm</hostname>
              <path>/tmp/gl/b3/brick</path>
              <peerid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</peerid>
              <status>1</status>
              <port>49382</port>
              <ports>
                <tcp>49382</tcp>
                <rdma>N/A</rdma>
              </ports>
              <pid>641</pid>
            </node>
            <node>
              <hostname>Self-heal Daemon</hostname>
              <path>localhost</path>
              <peerid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</peerid>
              <status>1</status>
              <port>N/A</port>
              <ports>
                <tcp>N/A</tcp>
                <rdma>N/A</rdma>
              </ports>
              <pid>658</pid>
            </node>
            <tasks/>
          </volume>
        </volumes>
      </volStatus>
    </cliOutput>
    """#

    /// `gluster --xml volume status gv0` after the first brick's glusterfsd was killed (SIGKILL).
    static let volumeStatusOneDown = #"""
    <?xml version="1.0" encoding="UTF-8" standalone="yes"?>
    <cliOutput>
      <opRet>0</opRet>
      <opErrno>0</opErrno>
      <opErrstr/>
      <volStatus>
        <volumes>
          <volume>
            <volName>gv0</volName>
            <nodeCount>4</nodeCount>
            <node>
              <hostname>vm</hostname>
              <path>/tmp/gl/b1/brick</path>
              <peerid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</peerid>
              <status>0</status>
              <port>N/A</port>
              <ports>
                <tcp>N/A</tcp>
                <rdma>N/A</rdma>
              </ports>
              <pid>-1</pid>
            </node>
            <node>
              <hostname>vm</hostname>
              <path>/tmp/gl/b2/brick</path>
              <peerid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</peerid>
              <status>1</status>
              <port>54836</port>
              <ports>
                <tcp>54836</tcp>
                <rdma>N/A</rdma>
              </ports>
              <pid>625</pid>
            </node>
            <node>
              <hostname>vm</hostname>
              <path>/tmp/gl/b3/brick</path>
              <peerid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</peerid>
              <status>1</status>
              <port>49382</port>
              <ports>
                <tcp>49382</tcp>
                <rdma>N/A</rdma>
              </ports>
              <pid>641</pid>
            </node>
            <node>
              <hostname>Self-heal Daemon</hostname>
              <path>localhost</path>
              <peerid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</peerid>
              <status>1</status>
              <port>N/A</port>
              <ports>
                <tcp>N/A</tcp>
                <rdma>N/A</rdma>
              </ports>
              <pid>658</pid>
            </node>
            <tasks/>
          </volume>
        </volumes>
      </volStatus>
    </cliOutput>
    """#

    /// `gluster --xml volume status gv0` with the first two bricks' glusterfsd killed.
    static let volumeStatusTwoDown = #"""
    <?xml version="1.0" encoding="UTF-8" standalone="yes"?>
    <cliOutput>
      <opRet>0</opRet>
      <opErrno>0</opErrno>
      <opErrstr/>
      <volStatus>
        <volumes>
          <volume>
            <volName>gv0</volName>
            <nodeCount>4</nodeCount>
            <node>
              <hostname>vm</hostname>
              <path>/tmp/gl/b1/brick</path>
              <peerid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</peerid>
              <status>0</status>
              <port>N/A</port>
              <ports>
                <tcp>N/A</tcp>
                <rdma>N/A</rdma>
              </ports>
              <pid>-1</pid>
            </node>
            <node>
              <hostname>vm</hostname>
              <path>/tmp/gl/b2/brick</path>
              <peerid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</peerid>
              <status>0</status>
              <port>N/A</port>
              <ports>
                <tcp>N/A</tcp>
                <rdma>N/A</rdma>
              </ports>
              <pid>-1</pid>
            </node>
            <node>
              <hostname>vm</hostname>
              <path>/tmp/gl/b3/brick</path>
              <peerid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</peerid>
              <status>1</status>
              <port>49382</port>
              <ports>
                <tcp>49382</tcp>
                <rdma>N/A</rdma>
              </ports>
              <pid>641</pid>
            </node>
            <node>
              <hostname>Self-heal Daemon</hostname>
              <path>localhost</path>
              <peerid>cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451</peerid>
              <status>1</status>
              <port>N/A</port>
              <ports>
                <tcp>N/A</tcp>
                <rdma>N/A</rdma>
              </ports>
              <pid>3521</pid>
            </node>
            <tasks/>
          </volume>
        </volumes>
      </volStatus>
    </cliOutput>
    """#

    /// `gluster --xml volume status ev0` after ev0 was deleted (opRet -1).
    static let volumeStatusNoSuchVolume = #"""
    <?xml version="1.0" encoding="UTF-8" standalone="yes"?>
    <cliOutput>
      <opRet>-1</opRet>
      <opErrno>30800</opErrno>
      <opErrstr>Volume ev0 does not exist</opErrstr>
      <cliOp>volStatus</cliOp>
      <output>Volume ev0 does not exist</output>
    </cliOutput>
    """#

    /// `gluster --xml volume heal gv0 info`: nothing pending.
    static let healInfoClean = #"""
    <?xml version="1.0" encoding="UTF-8" standalone="yes"?>
    <cliOutput>
      <healInfo>
        <bricks>
          <brick hostUuid="cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451">
            <name>vm:/tmp/gl/b1/brick</name>
            <status>Connected</status>
            <numberOfEntries>0</numberOfEntries>
          </brick>
          <brick hostUuid="cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451">
            <name>vm:/tmp/gl/b2/brick</name>
            <status>Connected</status>
            <numberOfEntries>0</numberOfEntries>
          </brick>
          <brick hostUuid="cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451">
            <name>vm:/tmp/gl/b3/brick</name>
            <status>Connected</status>
            <numberOfEntries>0</numberOfEntries>
          </brick>
        </bricks>
      </healInfo>
      <opRet>0</opRet>
      <opErrno>0</opErrno>
      <opErrstr/>
    </cliOutput>
    """#

    /// `gluster --xml volume heal gv0 info` after the first brick died and two files were written (f6, f7).
    static let healInfoOneDown = #"""
    <?xml version="1.0" encoding="UTF-8" standalone="yes"?>
    <cliOutput>
      <healInfo>
        <bricks>
          <brick hostUuid="-">
            <name>vm:/tmp/gl/b1/brick</name>
            <status>Transport endpoint is not connected</status>
            <numberOfEntries>-</numberOfEntries>
          </brick>
          <brick hostUuid="cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451">
            <name>vm:/tmp/gl/b2/brick</name>
            <file gfid="67c26be4-3d44-4647-82a8-b2b47995f19b">/f6</file>
            <file gfid="00000000-0000-0000-0000-000000000001">/</file>
            <file gfid="cdd50d37-fd12-44f2-a5dd-cb56c8b9b8f9">/f7</file>
            <status>Connected</status>
            <numberOfEntries>3</numberOfEntries>
          </brick>
          <brick hostUuid="cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451">
            <name>vm:/tmp/gl/b3/brick</name>
            <file gfid="67c26be4-3d44-4647-82a8-b2b47995f19b">/f6</file>
            <file gfid="00000000-0000-0000-0000-000000000001">/</file>
            <file gfid="cdd50d37-fd12-44f2-a5dd-cb56c8b9b8f9">/f7</file>
            <status>Connected</status>
            <numberOfEntries>3</numberOfEntries>
          </brick>
        </bricks>
      </healInfo>
      <opRet>0</opRet>
      <opErrno>0</opErrno>
      <opErrstr/>
    </cliOutput>
    """#

    /// `gluster --xml volume heal gv0 info` with two bricks down.
    static let healInfoTwoDown = #"""
    <?xml version="1.0" encoding="UTF-8" standalone="yes"?>
    <cliOutput>
      <healInfo>
        <bricks>
          <brick hostUuid="-">
            <name>vm:/tmp/gl/b1/brick</name>
            <status>Transport endpoint is not connected</status>
            <numberOfEntries>-</numberOfEntries>
          </brick>
          <brick hostUuid="-">
            <name>vm:/tmp/gl/b2/brick</name>
            <status>Transport endpoint is not connected</status>
            <numberOfEntries>-</numberOfEntries>
          </brick>
          <brick hostUuid="cb7f84f0-c6aa-4c3c-a58d-e6b6c8394451">
            <name>vm:/tmp/gl/b3/brick</name>
            <status>Connected</status>
            <numberOfEntries>0</numberOfEntries>
          </brick>
        </bricks>
      </healInfo>
      <opRet>0</opRet>
      <opErrno>0</opErrno>
      <opErrstr/>
    </cliOutput>
    """#

}
