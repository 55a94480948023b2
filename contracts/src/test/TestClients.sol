// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ILilypadJobClient} from "../ILilypadJobClient.sol";

// Hostile and demanding JobCreator clients, for tests only (never shipped: compile.js reads only
// contracts/src/*.sol; tests/chain/solidity.py compiles this folder).

interface IJobCreatorLike {
    function token() external view returns (address);
    function jobCost() external view returns (uint96);
    function runJob(string calldata module, string[] calldata inputs, address payee) external returns (uint256);
}

interface IERC20Like {
    function approve(address spender, uint256 amount) external returns (bool);
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
}

/// @dev Asks for a job as a client contract does: the caller pays and is the payee.
abstract contract Asker is ILilypadJobClient {
    function ask(IJobCreatorLike jobCreator, string calldata module, string[] calldata inputs)
        external
        returns (uint256)
    {
        IERC20Like token = IERC20Like(jobCreator.token());
        uint256 cost = jobCreator.jobCost();
        require(token.transferFrom(msg.sender, address(this), cost), "transferFrom");
        require(token.approve(address(jobCreator), cost), "approve");
        return jobCreator.runJob(module, inputs, msg.sender);
    }
}

/// @dev Reverts every callback.
contract RevertingClient is Asker {
    function submitResults(uint256, bytes32, bytes calldata) external pure {
        revert("this client refuses every result");
    }
}

/// @dev Loops until its gas is gone.
contract GasBurnerClient is Asker {
    uint256 public spins;

    function submitResults(uint256, bytes32, bytes calldata) external {
        while (true) {
            ++spins;
        }
    }
}

/// @dev Reverts with `size` bytes of revert data, for a caller that would copy them.
contract RevertBombClient is Asker {
    uint256 public immutable size;

    constructor(uint256 size_) {
        size = size_;
    }

    function submitResults(uint256, bytes32, bytes calldata) external view {
        uint256 n = size;
        assembly {
            revert(0, n)
        }
    }
}

/// @dev Succeeds, returning `size` bytes, for a caller that would copy them.
contract ReturnBombClient is Asker {
    uint256 public immutable size;
    uint256 public calls;

    constructor(uint256 size_) {
        size = size_;
    }

    function submitResults(uint256, bytes32, bytes calldata) external {
        ++calls;
        uint256 n = size;
        assembly {
            return(0, n)
        }
    }
}

/// @dev Needs `need` gas before it records the result: fails if it is handed less.
contract GasNeedingClient is Asker {
    uint256 public immutable need;
    mapping(uint256 jobId => bytes) public results;

    constructor(uint256 need_) {
        need = need_;
    }

    function submitResults(uint256 jobId, bytes32, bytes calldata resultCid) external {
        uint256 until = gasleft() - need;
        while (gasleft() > until) {}
        results[jobId] = resultCid;
    }
}
