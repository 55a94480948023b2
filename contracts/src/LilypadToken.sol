// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title LilypadToken
/// @notice The ERC-20 (with EIP-2612 permit) that prices jobs and backs collateral on dev networks.
///         A deployment may name any other ERC-20 instead; JobMarket only needs transfer/transferFrom.
contract LilypadToken is ERC20, ERC20Permit, Ownable {
    constructor(address owner_, uint256 initialSupply)
        ERC20("Lilypad", "LP")
        ERC20Permit("Lilypad")
        Ownable(owner_)
    {
        _mint(owner_, initialSupply);
    }

    /// @notice Mint new tokens; dev networks use it to fund test accounts.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
